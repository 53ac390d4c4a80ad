// The Label card: keys are handled here, in the browser, against the image on screen.
//
// Python hands over a window of claimed images (the current one and the next few, as data URLs) and
// the key map. A key press makes a decision on the image shown *now*, advances to the next preloaded
// image at once, and queues the decision in an outbox that is sent to the server in order (one batch
// in flight at a time). Every decision names its image and its place in that image's history
// (`after`: the newest history row when the image was handed out; `step`: 1, 2, ... for each of this
// card's decisions and undos on it), so the server applies each one exactly once, to that image, even
// when it is sent again after a rerun, a reconnect or a server restart (the outbox is kept in
// localStorage until the server acknowledges it).
//
// With blur on (`hide` "blurred") every `src` is a veiled rendition, blurred on the server: the full
// picture of an image is not in the browser until the annotator reveals it. Revealing asks for it through
// the "reveal" state; it comes back as the item's `full`, kept while the image is in the window.

const cards = new WeakMap();
const RESEND_MS = 3000;
const HISTORY_LIMIT = 50;
const HELP_ROWS_LIMIT = 200; // the key list past this: a note (10,000 classes drew 10,000 rows per update)

function textEntry(el) {
  if (!el || el === document.body) return false;
  if (el.isContentEditable) return true;
  const tag = el.tagName;
  if (tag === "TEXTAREA" || tag === "SELECT") return true;
  if (tag !== "INPUT") return false;
  const type = (el.getAttribute("type") || "text").toLowerCase();
  return !["button", "checkbox", "radio", "range", "submit", "reset", "color", "file"].includes(type);
}

function deepActive() {
  // The focused element inside shadow roots (the card's own search box): document.activeElement is the host.
  let active = document.activeElement;
  while (active && active.shadowRoot && active.shadowRoot.activeElement) active = active.shadowRoot.activeElement;
  return active;
}

function closedCombobox(el) {
  // A Streamlit selectbox keeps the focus in its search box after an option is picked: with its list
  // closed, a key press is meant for the card, not for the box.
  return el && el.getAttribute && el.getAttribute("role") === "combobox" && el.getAttribute("aria-expanded") !== "true";
}

function baseKey(event) {
  if (event.key === "?") return "?";
  if (event.key === "Enter" || event.key === "Escape") return event.key;
  if (event.shiftKey && event.code) {
    if (event.code.startsWith("Digit")) return event.code.slice(5);
    if (event.code.startsWith("Key")) return event.code.slice(3).toLowerCase();
  }
  return event.key.length === 1 ? event.key.toLowerCase() : null;
}

function newId() {
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

class Card {
  constructor(parent) {
    this.parent = parent;
    this.root = parent.querySelector(".lc-root");
    this.items = new Map(); // image id -> item from the server (src kept once received)
    this.imgs = new Map(); // image id -> <img>, preloaded and decoded
    this.queue = []; // image ids to show; queue[0] is on screen
    this.outbox = [];
    this.inFlight = null; // {ids: Set, at: ms}
    this.history = []; // local decisions, newest last: {image, after, step, op}
    this.chains = new Map(); // image id -> {after, steps}
    this.tags = new Set();
    this.armed = null; // main class id whose sub-class keys are live
    this.revealed = null;
    this.reset = null;
    this.awaitingReset = false;
    this.seq = 0;
    this.epoch = newId();
    this.data = null;
    this.onKey = (event) => this.key(event);
    this.onClick = (event) => this.unfocus(event);
    window.addEventListener("keydown", this.onKey, true);
    document.addEventListener("click", this.onClick, true);
    window.__labelCard = this;
  }

  destroy() {
    window.removeEventListener("keydown", this.onKey, true);
    document.removeEventListener("click", this.onClick, true);
    if (window.__labelCard === this) window.__labelCard = undefined;
  }

  // ------------------------------------------------------------------------------- server updates

  update(data, setStateValue) {
    this.setStateValue = setStateValue;
    const first = this.data === null;
    this.data = data;
    if (first) this.build();
    if (first || this.storage !== data.storage) {
      this.storage = data.storage;
      this.restore();
    }
    for (const item of data.items) {
      const known = this.items.get(item.id);
      if (!item.src && known && known.src) item.src = known.src;
      if (!item.full && known && known.full) item.full = known.full;
      this.items.set(item.id, item);
      if (item.src) this.preload(item);
    }
    let missing = false;
    for (const ack of data.acks) this.acknowledge(ack);
    if (this.inFlight && [...this.inFlight.ids].every((id) => !this.outbox.some((op) => op.op === id))) {
      this.inFlight = null;
    }
    const pendingDecided = this.pendingDecided();
    const serverIds = data.items.map((item) => item.id);
    for (const item of data.items) {
      const chain = this.chains.get(item.id);
      const touched = this.outbox.some((op) => op.image === item.id) || this.history.some((h) => h.image === item.id);
      if (!chain || !touched) this.chains.set(item.id, { after: item.after, steps: 0 });
    }
    if (data.reset !== this.reset) {
      this.reset = data.reset;
      this.awaitingReset = false;
      this.queue = serverIds.filter((id) => !pendingDecided.has(id));
      this.clearTags();
    } else {
      const current = this.queue[0];
      const keep =
        current !== undefined && (serverIds.includes(current) || this.outbox.some((op) => op.image === current));
      const rest = serverIds.filter((id) => id !== current && !pendingDecided.has(id));
      this.queue = keep ? [current, ...rest] : rest;
    }
    for (const id of this.queue) {
      const item = this.items.get(id);
      if (!item || !item.src) missing = true;
    }
    this.forget();
    this.show();
    if (missing) {
      // This card lost images it was told it had (a remount): ask for them again.
      this.epoch = newId();
      this.flush(true);
    } else {
      this.flush(false);
    }
  }

  acknowledge(ack) {
    const index = this.outbox.findIndex((op) => op.op === ack.op);
    if (index < 0) return;
    const [op] = this.outbox.splice(index, 1);
    if (op.kind === "undo_annotation" && ack.status === "rejected") this.awaitingReset = false;
    this.save();
    const entry = this.history.find((h) => h.op === ack.op);
    if (entry) entry.annotation = ack.annotation;
    if (ack.status === "rejected") {
      // The image's history changed behind this card (e.g. a correction in the Recent list): forget
      // what it knew about that image and take the server's word.
      this.history = this.history.filter((h) => h.image !== ack.image);
      this.chains.delete(ack.image);
      this.flash(ack.message || "A decision was refused.");
    }
  }

  pendingDecided() {
    const last = new Map();
    for (const op of this.outbox) last.set(op.image, op.kind);
    return new Set([...last].filter(([, kind]) => kind !== "undo" && kind !== "undo_annotation").map(([id]) => id));
  }

  forget() {
    const keep = new Set([...this.queue, ...this.history.map((h) => h.image)]);
    for (const id of [...this.imgs.keys()]) {
      if (!keep.has(id)) {
        this.imgs.get(id).remove();
        this.imgs.delete(id);
        this.items.delete(id);
      }
    }
  }

  preload(item) {
    const known = this.imgs.get(item.id);
    if (known) {
      // Sent again: the annotator changed how images are hidden (blur on or off, another strength).
      if (known.llSrc !== item.src && known.llSrc !== item.full) this.setSource(known, item.src);
      return;
    }
    const img = document.createElement("img");
    img.className = "lc-img";
    img.alt = item.name;
    img.decoding = "sync";
    this.setSource(img, item.src);
    img.dataset.imageId = String(item.id);
    this.stage.appendChild(img);
    this.imgs.set(item.id, img);
    if (img.decode) img.decode().catch(() => {});
  }

  setSource(img, src) {
    // Compared by identity: the same string object costs nothing to compare on every key press.
    if (!src || img.llSrc === src) return;
    img.llSrc = src;
    img.src = src;
  }

  // ------------------------------------------------------------------------------- outbox

  save() {
    try {
      if (this.outbox.length) localStorage.setItem(this.storage, JSON.stringify(this.outbox));
      else localStorage.removeItem(this.storage);
    } catch (error) {
      // Private mode or a full store: the outbox still lives in memory.
    }
  }

  restore() {
    try {
      const saved = JSON.parse(localStorage.getItem(this.storage) || "[]");
      const known = new Set(this.outbox.map((op) => op.op));
      for (const op of saved) if (!known.has(op.op)) this.outbox.push(op);
      this.outbox.sort((a, b) => a.at - b.at || a.seq - b.seq);
      for (const op of this.outbox) this.seq = Math.max(this.seq, op.seq);
    } catch (error) {
      // Nothing usable stored.
    }
  }

  flush(force) {
    const now = Date.now();
    // Until the server has answered everything, look again now and then: an answer can be lost (a
    // reconnect, a restarted server), and then the outbox goes again.
    clearTimeout(this.retry);
    if (this.outbox.length) this.retry = setTimeout(() => this.flush(false), RESEND_MS + 50);
    if (this.inFlight && !force && now - this.inFlight.at < RESEND_MS) return;
    if (!this.outbox.length && !force) return;
    this.inFlight = this.outbox.length ? { ids: new Set(this.outbox.map((op) => op.op)), at: now } : null;
    this.setStateValue("outbox", { epoch: this.epoch, ops: this.outbox.slice(), sent: now });
    this.renderStatus();
  }

  send(op) {
    this.seq += 1;
    op.op = newId();
    op.seq = this.seq;
    op.at = Date.now();
    this.outbox.push(op);
    this.save();
    if (this.sendScheduled) return;
    // Send after the next image is painted: handing the state to Streamlit costs a render of its own.
    this.sendScheduled = true;
    requestAnimationFrame(() =>
      setTimeout(() => {
        this.sendScheduled = false;
        this.flush(false);
      }, 0),
    );
  }

  // ------------------------------------------------------------------------------- decisions

  current() {
    // Only an image that is on screen can be decided on (not one whose pixels have not arrived).
    const image = this.awaitingReset ? undefined : this.queue[0];
    return image !== undefined && this.imgs.has(image) ? image : undefined;
  }

  decide(kind, main, tags) {
    const image = this.current();
    if (image === undefined) {
      this.flash(this.queue.length ? "Wait: an undo is on its way." : "No image on screen yet.");
      return;
    }
    const item = this.items.get(image);
    const chain = this.chains.get(image) || { after: item.after, steps: 0 };
    chain.steps += 1;
    this.chains.set(image, chain);
    const op = {
      kind,
      image,
      after: chain.after,
      step: chain.steps,
      main: main ?? null,
      tags: [...tags],
      strategy: item.strategy,
      mv: item.mv,
    };
    this.send(op); // queued now, sent once the next image is painted
    this.history.push({ image, after: chain.after, step: chain.steps, op: op.op });
    if (this.history.length > HISTORY_LIMIT) this.history.shift();
    this.queue.shift();
    this.clearTags();
    this.revealed = null;
    this.show();
  }

  undo() {
    const last = this.history.pop();
    if (!last) {
      const undoable = this.data.undoable;
      if (!undoable) {
        this.flash("Nothing to undo.");
        return;
      }
      this.awaitingReset = true;
      this.send({ kind: "undo_annotation", image: undoable.image, annotation: undoable.annotation, after: 0, step: 0 });
      this.show();
      return;
    }
    const unsent = this.outbox.findIndex((op) => op.op === last.op);
    const chain = this.chains.get(last.image);
    if (unsent >= 0 && !(this.inFlight && this.inFlight.ids.has(last.op))) {
      // Never left the browser: drop it.
      this.outbox.splice(unsent, 1);
      this.save();
      if (chain) chain.steps -= 1;
    } else {
      chain.steps += 1;
      this.send({ kind: "undo", image: last.image, after: last.after, step: chain.steps, target: last.step });
    }
    this.queue = [last.image, ...this.queue.filter((id) => id !== last.image)];
    this.clearTags();
    this.show();
    this.flash("Undone: the image is back on screen.");
  }

  label(main) {
    const ownTags = [...this.tags].filter((id) => this.subOwner(id) === main);
    if (ownTags.length < this.tags.size) this.flash("Tags of another main class were dropped.");
    this.decide("label", main, ownTags);
  }

  unsure() {
    const main = this.tags.size ? this.armed : null;
    this.decide("unsure", main, this.tags);
  }

  commitTags() {
    if (!this.tags.size || this.armed === null) {
      this.flash("Pick sub-class tags of one main class, or press a main-class key.");
      return;
    }
    this.decide("label", this.armed, this.tags);
  }

  toggleTag(main, sub) {
    if (this.armed !== main) this.tags.clear();
    this.armed = main;
    if (this.tags.has(sub)) this.tags.delete(sub);
    else this.tags.add(sub);
    this.renderClasses();
  }

  arm(main) {
    if (this.armed !== main) this.tags.clear();
    this.armed = main;
    this.renderClasses();
  }

  clearTags() {
    this.tags.clear();
    this.armed = null;
    if (this.classes) this.renderClasses();
  }

  subOwner(sub) {
    for (const main of this.data.taxonomy) if (main.subs.some((s) => s.id === sub)) return main.id;
    return null;
  }

  // ------------------------------------------------------------------------------- keys and focus

  unfocus(event) {
    // After a mouse click, give the keys back to the card unless the click was into a text box.
    setTimeout(() => {
      const active = deepActive();
      if (active && active !== document.body && (!textEntry(active) || closedCombobox(active))) active.blur();
    }, 0);
  }

  key(event) {
    if (!this.root.isConnected || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    const active = deepActive();
    if (textEntry(active) && !closedCombobox(active)) return;
    if (document.querySelector("[role='dialog'][aria-modal='true']")) return;
    const key = baseKey(event);
    if (key === null) return;
    const keys = this.data.keys;
    let handled = true;
    if (event.repeat) {
      handled = key !== "?";
    } else if (!this.help.hidden && key !== "?" && key !== "Escape") {
      handled = true; // the key list covers the image: nothing is decided blind
    } else if (key === "?") {
      this.toggleHelp();
    } else if (key === "Escape") {
      if (!this.help.hidden) this.toggleHelp(false);
      else if (this.tags.size || this.armed !== null) this.clearTags();
      else handled = false;
    } else if (keys.mainByKey[key] !== undefined) {
      const main = keys.mainByKey[key];
      if (event.shiftKey) this.arm(main);
      else this.label(main);
    } else if (key === keys.page.skip) {
      this.decide("skip", null, []);
    } else if (key === keys.page.unsure) {
      this.unsure();
    } else if (key === keys.page.undo) {
      this.undo();
    } else if (key === keys.page.reveal) {
      this.toggleReveal();
    } else if (key === "Enter") {
      this.commitTags();
    } else if (keys.tagsByKey[key] !== undefined) {
      const owners = keys.tagsByKey[key]; // [[main id, sub id], ...]
      const pick =
        owners.find(([main]) => main === this.armed) || (owners.length === 1 ? owners[0] : undefined);
      if (pick) this.toggleTag(pick[0], pick[1]);
      else this.flash(`"${key}" is a sub-class key of several main classes: press Shift and a main-class key first.`);
    } else {
      handled = false;
    }
    if (handled) {
      event.preventDefault();
      event.stopPropagation();
      if (active && active !== document.body && closedCombobox(active)) active.blur();
    }
  }

  toggleReveal() {
    const image = this.current();
    if (image === undefined || this.data.hide === "plain") return;
    this.revealed = this.revealed === image ? null : image;
    const item = this.items.get(image);
    if (this.revealed === image && this.data.hide === "blurred" && !item.full) {
      // Only now does the full picture leave the server; the veiled one stays until it arrives.
      this.setStateValue("reveal", { image, nonce: newId() });
    }
    this.show();
  }

  toggleHelp(force) {
    this.help.hidden = force === undefined ? !this.help.hidden : !force;
  }

  // ------------------------------------------------------------------------------- drawing

  build() {
    const root = this.root;
    root.replaceChildren();
    const left = el("div", "lc-left");
    this.stage = el("div", "lc-stage");
    this.empty = el("div", "lc-empty");
    this.stage.appendChild(this.empty);
    this.caption = el("div", "lc-caption");
    this.caption.setAttribute("data-testid", "label-card-caption");
    left.append(this.stage, this.caption);

    const right = el("div", "lc-right");
    this.model = el("div", "lc-model");
    const mainTitle = el("div", "lc-title", "Main class · its key labels and advances");
    // Past data.maxButtons main classes, a search box and the matching classes only: one button per class
    // (10,000 of them) left the page unusable.
    this.search = el("input", "lc-search");
    this.search.type = "search";
    this.search.placeholder = "Find a main class by name…";
    this.search.setAttribute("aria-label", "Find a main class");
    this.search.dataset.testid = "label-card-search";
    this.search.hidden = true;
    this.search.addEventListener("input", () => this.renderClasses());
    this.search.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.search.blur();
      if (event.key !== "Enter") return;
      const matches = this.classMatches();
      if (matches.length === 1) {
        this.search.blur();
        this.label(matches[0].id);
      }
    });
    this.classes = el("div", "lc-classes");
    this.actions = el("div", "lc-actions");
    const action = (label, key, fn, name) => {
      const button = el("button", "lc-button");
      button.type = "button";
      button.dataset.action = name;
      button.append(el("span", "lc-name", label), el("kbd", "", key));
      button.addEventListener("click", () => fn());
      this.actions.appendChild(button);
      return button;
    };
    const page = this.data.keys.page;
    action("Skip", page.skip, () => this.decide("skip", null, []), "skip");
    action("Unsure", page.unsure, () => this.unsure(), "unsure");
    action("Undo", page.undo, () => this.undo(), "undo");
    this.revealButton = action("Reveal", page.reveal, () => this.toggleReveal(), "reveal");
    action("Keys", "?", () => this.toggleHelp(), "help");
    this.status = el("div", "lc-status");
    this.status.setAttribute("data-testid", "label-card-status");
    this.message = el("div", "lc-message");
    this.message.setAttribute("role", "status");
    right.append(this.model, mainTitle, this.search, this.classes, this.actions, this.status, this.message);

    this.help = el("div", "lc-help");
    this.help.hidden = true;
    this.help.setAttribute("data-testid", "label-card-help");
    root.append(left, right, this.help);
  }

  renderHelp() {
    const help = this.help;
    help.replaceChildren();
    const box = el("div", "lc-help-box");
    box.appendChild(el("h3", "", "Keys"));
    const table = el("table");
    const row = (key, what, note) => {
      const tr = el("tr");
      const k = el("td");
      k.appendChild(el("kbd", "", key));
      tr.append(k, el("td", "", what), el("td", "lc-note", note || ""));
      table.appendChild(tr);
    };
    const picker = this.picker();
    let rows = 0;
    let left = 0;
    for (const main of this.data.taxonomy) {
      for (const [key, what, note] of [
        [main.key, `label ${main.name}`, main.assigned ? "assigned: the taxonomy file gives no usable key" : ""],
        ...main.subs.map((sub) => [sub.key, `tag ${main.name} / ${sub.name}`, sub.assigned ? "assigned" : ""]),
      ]) {
        if (!key && picker) continue; // found with the search box instead
        if (rows >= HELP_ROWS_LIMIT) {
          left += 1;
          continue;
        }
        row(key || "-", what, note);
        rows += 1;
      }
    }
    if (left) row("…", `${left} more keys of classes and tags`);
    if (picker) row("", "classes without a key: find them with the search box above the class buttons");
    for (const [key, what] of this.data.keys.described) row(key, what);
    box.appendChild(table);
    const close = el("button", "lc-button", "Close (Esc)");
    close.type = "button";
    close.addEventListener("click", () => this.toggleHelp(false));
    box.appendChild(close);
    help.appendChild(box);
  }

  picker() {
    const max = this.data.maxButtons;
    return Boolean(max) && this.data.taxonomy.length > max;
  }

  classMatches() {
    const needle = this.search.value.trim().toLocaleLowerCase();
    if (!needle) return [];
    return this.data.taxonomy.filter((main) => main.name.toLocaleLowerCase().includes(needle));
  }

  classesShown(box) {
    if (!this.picker()) {
      this.search.hidden = true;
      return this.data.taxonomy;
    }
    const all = this.data.taxonomy;
    const max = this.data.maxButtons;
    this.search.hidden = false;
    const matches = this.classMatches();
    const shown = matches.slice(0, max);
    // The armed class (Shift and its key) stays in view, so that its tags can be clicked.
    const armed = all.find((main) => main.id === this.armed);
    if (armed && !shown.includes(armed)) shown.unshift(armed);
    let hint = "";
    if (!this.search.value.trim()) hint = `${all.length} main classes: type to find one, or press its key.`;
    else if (!matches.length) hint = "No main class matches.";
    else if (matches.length > max) hint = `${matches.length} match: the first ${max} are shown, type more.`;
    if (hint) {
      const note = el("div", "lc-muted", hint);
      note.dataset.testid = "label-card-search-hint";
      box.appendChild(note);
    }
    return shown;
  }

  renderClasses() {
    const box = this.classes;
    box.replaceChildren();
    for (const main of this.classesShown(box)) {
      const group = el("div", "lc-group");
      const button = el("button", "lc-button lc-main");
      button.type = "button";
      button.dataset.main = String(main.id);
      if (this.armed === main.id) button.classList.add("lc-armed");
      button.append(el("span", "lc-name", main.name), el("kbd", "", main.key || "-"));
      button.addEventListener("click", () => this.label(main.id));
      group.appendChild(button);
      if (main.subs.length) {
        const tags = el("div", "lc-tags");
        for (const sub of main.subs) {
          const chip = el("button", "lc-chip");
          chip.type = "button";
          chip.dataset.sub = String(sub.id);
          if (this.tags.has(sub.id)) chip.classList.add("lc-on");
          chip.setAttribute("aria-pressed", this.tags.has(sub.id) ? "true" : "false");
          chip.append(el("span", "", sub.name), el("kbd", "", sub.key || "-"));
          chip.addEventListener("click", () => this.toggleTag(main.id, sub.id));
          tags.appendChild(chip);
        }
        group.appendChild(tags);
      }
      box.appendChild(group);
    }
  }

  renderModel(item) {
    const box = this.model;
    box.replaceChildren();
    box.appendChild(el("div", "lc-title", "Model"));
    if (!item) return;
    if (item.audit) {
      box.appendChild(el("div", "lc-muted", "No prediction on audit images: your label measures the model."));
    } else if (!item.pred) {
      box.appendChild(el("div", "lc-muted", "No prediction yet: images come in cold-start order until a model is trained."));
    } else {
      const predicted = el("div", "lc-predicted");
      predicted.append("Predicted: ", el("b", "", item.pred.main + (item.pred.sub ? ` / ${item.pred.sub}` : "")));
      box.appendChild(predicted);
      for (const [name, p] of item.pred.bars) {
        const bar = el("div", "lc-bar");
        const fill = el("div", "lc-fill");
        fill.style.width = `${Math.round(p * 100)}%`;
        bar.append(fill, el("span", "", `${name}: ${Math.round(p * 100)}%`));
        box.appendChild(bar);
      }
      if (item.pred.note) {
        const note = el("div", "lc-muted", item.pred.note);
        note.dataset.testid = "lc-confidence-note";
        box.appendChild(note);
      }
    }
    let why = `Why this image: ${item.reason}`;
    if (item.score !== null && item.score !== undefined) why += ` (score ${item.score.toFixed(3)})`;
    const reason = el("div", "lc-muted", why);
    reason.dataset.testid = "lc-why";
    box.appendChild(reason);
  }

  renderStatus() {
    if (!this.status) return;
    const waiting = this.outbox.length;
    this.status.textContent = waiting ? `Saving ${waiting} decision${waiting > 1 ? "s" : ""}…` : "All decisions saved.";
    this.status.dataset.pending = String(waiting);
  }

  show() {
    const image = this.current();
    if (this.shownData !== this.data) {
      this.shownData = this.data;
      this.renderClasses();
      this.renderHelp();
    }
    const hide = this.data.hide;
    const item = image === undefined ? undefined : this.items.get(image);
    for (const [id, img] of this.imgs) {
      const visible = id === image;
      img.classList.toggle("lc-visible", visible);
      img.classList.toggle("lc-grey", visible && hide === "grey" && this.revealed !== id);
    }
    if (item && this.imgs.has(image)) {
      // Blurred: the veiled rendition, or the full picture once revealed and received.
      const full = hide === "blurred" && this.revealed === image && item.full;
      this.setSource(this.imgs.get(image), full || item.src);
      this.root.dataset.revealed = full ? "full" : "";
    }
    if (item && this.imgs.has(image)) {
      this.empty.hidden = true;
      this.caption.textContent = `${item.name} · ${item.w}x${item.h} · image ${item.id}`;
      this.root.dataset.imageId = String(item.id);
    } else {
      this.empty.hidden = false;
      this.empty.textContent = this.awaitingReset
        ? "Undoing…"
        : this.data.exhausted && !this.queue.length
          ? "The queue is empty: every image is labelled or held by another annotator."
          : "Loading the next images…";
      this.caption.textContent = "";
      this.root.dataset.imageId = "";
    }
    this.revealButton.hidden = hide === "plain";
    this.revealButton.querySelector(".lc-name").textContent = this.revealed === image ? "Hide" : "Reveal";
    if (this.shownModel !== item) {
      this.shownModel = item;
      this.renderModel(item);
    }
    this.renderStatus();
    window.dispatchEvent(new CustomEvent("labelcard:shown", { detail: { imageId: item ? item.id : null } }));
  }

  flash(text) {
    this.message.textContent = text;
    clearTimeout(this.flashTimer);
    this.flashTimer = setTimeout(() => {
      this.message.textContent = "";
    }, 4000);
  }
}

export default function (component) {
  const { data, setStateValue, parentElement } = component;
  let card = cards.get(parentElement);
  if (!card) {
    card = new Card(parentElement);
    cards.set(parentElement, card);
  }
  card.update(data, setStateValue);
  return () => {
    card.destroy();
    cards.delete(parentElement);
  };
}
