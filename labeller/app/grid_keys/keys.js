// Grid: keyboard selection over the page's tile checkboxes (each in an element keyed "pick-<id>").
//
// Arrow keys move the focus from tile to tile (`columns` per row); Space ticks the focused tile (the
// checkbox's own behaviour); a Shift-click ticks every tile from the last tile clicked or ticked with
// Space to this one, through the component's "range" state (the server selects them). After a rerun
// redraws the tiles, the focus goes back to the tile it was on.

const layers = new WeakMap();

function tileId(node) {
  const holder = node && node.closest && node.closest('[class*="st-key-pick-"]');
  if (!holder) return null;
  const match = /(?:^|\s)st-key-pick-(\d+)(?=\s|$)/.exec(holder.className);
  return match ? Number(match[1]) : null;
}

function checkbox(id) {
  const holder = document.querySelector(`.st-key-pick-${id}`);
  return holder ? holder.querySelector('input[type="checkbox"]') : null;
}

function idle(active) {
  // Focus on the page itself (body, main, a heading) leaves the keys free; a widget keeps them.
  if (!active || active === document.body) return true;
  if (active.isContentEditable) return false;
  if (["INPUT", "TEXTAREA", "SELECT", "BUTTON", "A"].includes(active.tagName)) return false;
  const role = active.getAttribute && active.getAttribute("role");
  return !["combobox", "listbox", "option", "slider", "textbox", "menuitem", "tab", "button"].includes(role);
}

class GridKeys {
  constructor() {
    this.cursor = null; // image id of the tile with the keyboard focus
    this.focused = null; // the checkbox element given the focus last
    this.anchor = null; // image id a Shift-click range starts from
    this.nonce = 0;
    this.onClick = (event) => {
      const id = tileId(event.target);
      if (id === null) {
        // A click elsewhere (a button, the page) ends the keyboard walk: no focus comes back later.
        this.cursor = null;
        this.focused = null;
        return;
      }
      if (event.shiftKey && this.anchor !== null && this.anchor !== id) {
        event.preventDefault();
        event.stopPropagation();
        this.nonce += 1;
        this.setStateValue("range", { from: this.anchor, to: id, nonce: this.nonce });
      }
      this.anchor = id;
      this.cursor = id;
      this.focused = checkbox(id);
    };
    this.onKey = (event) => {
      const id = tileId(document.activeElement);
      const ids = (this.data && this.data.ids) || [];
      if (!ids.length) return;
      if (event.key === " " && id !== null) {
        this.anchor = id;
        this.cursor = id;
        this.focused = document.activeElement;
        return; // the checkbox ticks itself
      }
      const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: this.data.columns, ArrowUp: -this.data.columns }[event.key];
      if (step === undefined || event.altKey || event.ctrlKey || event.metaKey) return;
      if (id === null && !idle(document.activeElement)) return; // another widget has the keys
      const here = id === null ? -1 : ids.indexOf(id);
      const next = here < 0 ? 0 : Math.min(ids.length - 1, Math.max(0, here + step));
      const target = checkbox(ids[next]);
      if (!target) return;
      event.preventDefault();
      this.cursor = ids[next];
      this.focused = target;
      target.focus();
    };
    document.addEventListener("click", this.onClick, true);
    window.addEventListener("keydown", this.onKey, true);
    this.timer = setInterval(() => this.refocus(), 250);
  }

  refocus() {
    // A tick reruns the page and redraws its checkbox, and the focus falls to the page: give it back to
    // the tile it was on. Only then: while the focused checkbox is still in the page, the focus left it
    // because the annotator moved it elsewhere.
    if (this.cursor === null || !idle(document.activeElement)) return;
    if (this.focused && this.focused.isConnected) return;
    const target = checkbox(this.cursor);
    if (!target) return;
    this.focused = target;
    target.focus();
  }

  update(data, setStateValue) {
    this.data = data;
    this.setStateValue = setStateValue;
    if (this.cursor !== null && !data.ids.includes(this.cursor)) this.cursor = null;
    if (this.anchor !== null && !data.ids.includes(this.anchor)) this.anchor = null;
  }

  destroy() {
    clearInterval(this.timer);
    document.removeEventListener("click", this.onClick, true);
    window.removeEventListener("keydown", this.onKey, true);
  }
}

export default function (component) {
  const { data, setStateValue, parentElement } = component;
  let layer = layers.get(parentElement);
  if (!layer) {
    layer = new GridKeys();
    layers.set(parentElement, layer);
  }
  layer.update(data, setStateValue);
  return () => {
    layer.destroy();
    layers.delete(parentElement);
  };
}
