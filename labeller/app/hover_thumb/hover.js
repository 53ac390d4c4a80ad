// Explore: hovering a point of the latent map shows its thumbnail next to the pointer, clear of plotly's
// own hover label and inside the chart.
//
// The map is an ordinary st.plotly_chart whose trace carries the image id of each point as customdata.
// This component finds that chart in the page (class js-plotly-plot, inside the element keyed
// "explore-map"), listens to plotly's hover events, and asks the server for the hovered image's thumbnail
// through its "hover" state; the server answers with a data URL in `data.thumb`. Thumbnails already
// received are kept, so hovering back over a point is instant. The image is hidden (blur, greyscale)
// as the annotator's settings say; holding Shift reveals it while held, when reveal on hold is on. With
// blur on ("veiled") the thumbnail is blurred on the server: Shift asks for the full one ("reveal" state).

const tips = new WeakMap();

class HoverTip {
  constructor(parent) {
    this.parent = parent;
    this.cache = new Map(); // image id -> data URL
    this.full = new Map(); // image id -> data URL of the full thumbnail (veiled: asked for on reveal)
    this.nonce = 0;
    this.hovered = null;
    this.requested = null;
    this.shift = false;
    this.tip = document.createElement("div");
    this.tip.className = "ll-hover-tip";
    // Inline styles: the tip lives in the page body, outside the component's own styles.
    Object.assign(this.tip.style, {
      position: "fixed", zIndex: "1000100", pointerEvents: "none", background: "#fff", padding: "4px",
      borderRadius: "6px", boxShadow: "0 2px 10px rgba(0, 0, 0, 0.25)", width: "164px", overflow: "hidden",
    });
    this.tip.setAttribute("data-testid", "explore-hover-thumb");
    this.tip.hidden = true;
    this.img = document.createElement("img");
    this.img.alt = "";
    Object.assign(this.img.style, { display: "block", width: "156px", height: "156px", objectFit: "contain" });
    this.caption = document.createElement("div");
    this.caption.className = "ll-hover-caption";
    Object.assign(this.caption.style, { font: "12px sans-serif", color: "#333", paddingTop: "2px" });
    this.tip.append(this.img, this.caption);
    document.body.appendChild(this.tip);
    this.onKey = (event) => {
      if (event.key !== "Shift") return;
      this.shift = event.type === "keydown";
      this.render();
    };
    window.addEventListener("keydown", this.onKey);
    window.addEventListener("keyup", this.onKey);
    this.timer = setInterval(() => this.attach(), 400);
  }

  attach() {
    const holder = document.querySelector('[class*="st-key-explore-map"]');
    const chart = holder && holder.querySelector(".js-plotly-plot");
    if (!chart || typeof chart.on !== "function" || chart.__llHover) return;
    chart.__llHover = true;
    chart.on("plotly_hover", (event) => {
      const point = event.points && event.points[0];
      if (!point || point.customdata === undefined) return;
      const id = Number(Array.isArray(point.customdata) ? point.customdata[0] : point.customdata);
      this.hovered = id;
      this.chart = chart;
      const mouse = event.event || {};
      this.x = mouse.clientX || 0;
      this.y = mouse.clientY || 0;
      if (!this.cache.has(id) && this.requested !== id) {
        this.requested = id;
        this.setStateValue("hover", id);
      }
      this.render();
    });
    chart.on("plotly_unhover", () => {
      this.hovered = null;
      this.render();
    });
  }

  update(data, setStateValue) {
    this.setStateValue = setStateValue;
    if (!this.data || this.data.veil !== data.veil) {
      // Images are hidden another way now: what was received was hidden the old way.
      this.cache.clear();
      this.full.clear();
      this.revealRequested = null;
    }
    this.data = data;
    if (data.thumb && data.thumb.src) this.cache.set(Number(data.thumb.id), data.thumb.src);
    if (data.full && data.full.src) this.full.set(Number(data.full.id), data.full.src);
    this.attach();
    this.render();
  }

  render() {
    const id = this.hovered;
    const src = id === null ? undefined : this.cache.get(id);
    if (!src) {
      this.tip.hidden = true;
      this.tip.dataset.imageId = "";
      return;
    }
    const hide = this.data ? this.data.hide : "blurred";
    let revealed = this.shift && this.data && this.data.revealOnHold;
    let shown = src;
    if (revealed && hide === "veiled") {
      shown = this.full.get(id);
      if (!shown && this.revealRequested !== id) {
        this.revealRequested = id;
        // A new nonce each time (a remounted tip starts with none of the full thumbnails).
        this.nonce = Math.max(this.nonce + 1, Date.now());
        this.setStateValue("reveal", { image: id, nonce: this.nonce });
      }
      revealed = Boolean(shown);
      shown = shown || src; // the veiled one until the full one arrives
    }
    if (this.img.src !== shown) this.img.src = shown;
    this.img.style.filter =
      revealed || hide === "plain" || hide === "veiled"
        ? "none"
        : hide === "grey"
          ? "grayscale(1) contrast(0.9)"
          : `blur(${(this.data && this.data.blurPx) || 22}px)`;
    this.tip.dataset.hide = revealed ? "plain" : hide;
    this.tip.dataset.imageId = String(id);
    this.caption.textContent = `image ${id}`;
    this.tip.hidden = false;
    this.place();
  }

  // Put the tip where it covers neither plotly's hover label nor the hovered point, inside the chart.
  place() {
    const gap = 12;
    const own = this.tip.getBoundingClientRect();
    const width = own.width || 172;
    const height = own.height || 190;
    const x = this.x;
    const y = this.y;
    const chart = this.chart && this.chart.isConnected ? this.chart.getBoundingClientRect() : null;
    const bounds = {
      left: Math.max(0, chart ? chart.left : 0),
      top: Math.max(0, chart ? chart.top : 0),
      right: Math.min(window.innerWidth, chart ? chart.right : window.innerWidth),
      bottom: Math.min(window.innerHeight, chart ? chart.bottom : window.innerHeight),
    };
    // Plotly draws its label (g.hovertext) before it emits plotly_hover, on either side of the point.
    const text = this.chart && this.chart.querySelector("g.hovertext");
    const drawn = text ? text.getBoundingClientRect() : null;
    const label = drawn && drawn.width > 0 ? drawn : null; // a label not laid out yet counts as none
    const avoid = [{ left: x - 6, top: y - 6, right: x + 6, bottom: y + 6 }];
    if (label) avoid.push(label);
    const labelLeft = label && (label.left + label.right) / 2 < x;
    const near = labelLeft ? x + gap : x - gap - width; // the other side of the cursor from the label
    const far = labelLeft ? x - gap - width : x + gap;
    const spanTop = Math.min(y, label ? label.top : y);
    const spanBottom = Math.max(y, label ? label.bottom : y);
    const candidates = [
      [near, y - height / 2],
      [x - width / 2, spanTop - gap - height], // above the label and the point
      [x - width / 2, spanBottom + gap], // below them
      [label && labelLeft ? label.left - gap - width : far, y - height / 2], // beyond the label
      [label && !labelLeft ? label.right + gap : far, y - height / 2],
    ];
    const clamp = ([left, top]) => {
      const l = Math.max(bounds.left, Math.min(left, bounds.right - width));
      const t = Math.max(bounds.top, Math.min(top, bounds.bottom - height));
      return { left: l, top: t, right: l + width, bottom: t + height };
    };
    const overlap = (a, b) =>
      Math.max(0, Math.min(a.right, b.right) - Math.max(a.left, b.left)) *
      Math.max(0, Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top));
    let best = null;
    let bestCost = Infinity;
    for (const candidate of candidates) {
      const box = clamp(candidate);
      const cost = avoid.reduce((sum, other) => sum + overlap(box, other), 0);
      if (cost < bestCost) {
        best = box;
        bestCost = cost;
      }
      if (cost === 0) break; // the first place that covers nothing, in order of preference
    }
    this.tip.style.left = `${best.left}px`;
    this.tip.style.top = `${best.top}px`;
  }

  destroy() {
    clearInterval(this.timer);
    window.removeEventListener("keydown", this.onKey);
    window.removeEventListener("keyup", this.onKey);
    this.tip.remove();
  }
}

export default function (component) {
  const { data, setStateValue, parentElement } = component;
  let tip = tips.get(parentElement);
  if (!tip) {
    tip = new HoverTip(parentElement);
    tips.set(parentElement, tip);
  }
  tip.update(data, setStateValue);
  return () => {
    tip.destroy();
    tips.delete(parentElement);
  };
}
