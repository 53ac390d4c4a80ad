// Reveal on hold for veiled image tiles (see reveal/__init__.py).
//
// A tile is an element keyed "hide-<class>-<name>-<image id>". Pressing the mouse button on a "veiled"
// tile (a blurred rendition from the server) asks for that image through the "reveal" state; the page
// then redraws it as a "blurred" tile (the full picture under a CSS blur). While the button is held the
// tile is marked data-ll-held, which lifts the CSS blur; the mark is put back after the rerun redraws it.

const layers = new WeakMap();
const TILE = /(?:^|\s)st-key-hide-(veiled|blurred)-[\w-]*?-(\d+)(?:\s|$)/;

function tileOf(node) {
  const holder = node && node.closest && node.closest('[class*="st-key-hide-"]');
  const match = holder && TILE.exec(holder.className);
  return match ? { holder, id: Number(match[2]), veiled: match[1] === "veiled" } : null;
}

class HoldReveal {
  constructor() {
    this.held = null;
    this.nonce = 0;
    this.onDown = (event) => {
      if (!this.data || !this.data.enabled || event.button !== 0) return;
      const tile = tileOf(event.target);
      if (!tile || !this.data.ids.includes(tile.id)) return;
      this.held = tile.id;
      this.mark();
      clearInterval(this.timer);
      this.timer = setInterval(() => this.mark(), 50); // a rerun redraws the tile: mark it again
      if (tile.veiled) {
        this.nonce = Math.max(this.nonce + 1, Date.now()); // new after a remount too: the state must change
        this.setStateValue("reveal", { image: tile.id, nonce: this.nonce });
      }
    };
    this.onUp = () => {
      if (this.held === null) return;
      this.held = null;
      clearInterval(this.timer);
      this.mark();
    };
    document.addEventListener("mousedown", this.onDown, true);
    window.addEventListener("mouseup", this.onUp, true);
    window.addEventListener("blur", this.onUp);
  }

  mark() {
    for (const node of document.querySelectorAll("[data-ll-held]")) {
      const tile = tileOf(node);
      if (!tile || tile.id !== this.held) node.removeAttribute("data-ll-held");
    }
    if (this.held === null) return;
    for (const node of document.querySelectorAll('[class*="st-key-hide-"]')) {
      const tile = tileOf(node);
      if (tile && tile.holder === node && tile.id === this.held) node.setAttribute("data-ll-held", "");
    }
  }

  update(data, setStateValue) {
    this.data = data;
    this.setStateValue = setStateValue;
  }

  destroy() {
    clearInterval(this.timer);
    document.removeEventListener("mousedown", this.onDown, true);
    window.removeEventListener("mouseup", this.onUp, true);
    window.removeEventListener("blur", this.onUp);
  }
}

export default function (component) {
  const { data, setStateValue, parentElement } = component;
  let layer = layers.get(parentElement);
  if (!layer) {
    layer = new HoldReveal();
    layers.set(parentElement, layer);
  }
  layer.update(data, setStateValue);
  return () => {
    layer.destroy();
    layers.delete(parentElement);
  };
}
