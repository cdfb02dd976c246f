// One Plotly chart of lines over rounds or epochs, drawn at a cost that does not grow with
// the run: a line of more than 2 × BUCKETS points is drawn as min/max buckets (spikes stay),
// new points are appended to the drawn lines (Plotly.extendTraces), and once a line has
// grown by BUCKETS raw points since its last full draw, it is bucketed again. Zooming in
// redraws the zoomed range at full detail once it holds few enough points.

import { minMaxPoints } from "./downsample.js";
import { plotly } from "./plotly.js";

/** Plotly's options for every chart of the page. */
export const PLOT_CONFIG = {
  displaylogo: false,
  responsive: true,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"],
};
// A line with more points than twice this is drawn as this many min/max buckets.
const BUCKETS = 500;
// Past this many points on a line, markers only clutter it (and cost SVG nodes).
const MARKER_LIMIT = 60;

/** The layout every chart of the page shares. */
export function baseLayout(overrides = {}) {
  return {
    height: 250,
    margin: { l: 48, r: 12, t: 36, b: 40 },
    font: { family: "system-ui, -apple-system, Segoe UI, sans-serif", size: 12, color: "#334155" },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    showlegend: false, // each view draws one legend for all of its charts
    hovermode: "x unified",
    ...overrides,
  };
}

/** A centred grey note for a chart with nothing to show yet. */
function emptyNote(text) {
  return {
    text,
    xref: "paper",
    yref: "paper",
    x: 0.5,
    y: 0.5,
    showarrow: false,
    font: { color: "#94a3b8", size: 13 },
  };
}

/** A tick step of 1, 2, 5, 10, 20, 50, ... giving at most ten ticks over `span`. */
export function wholeTickStep(span) {
  for (let step = 1; ; step *= 10) {
    for (const multiple of [1, 2, 5]) {
      if (span / (step * multiple) <= 10) return step * multiple;
    }
  }
}

/**
 * A line of a LineChart.
 * @typedef {object} Line
 * @property {string} key  identifies the line across updates
 * @property {string} name  shown on hover
 * @property {import("./series.js").Series} series  the points (the model's; never modified)
 * @property {string} color
 */

export class LineChart {
  #element;
  #onChange;
  #lines = []; // Line[] as drawn
  #drawn = []; // per line: {upTo: series points drawn, points: points in its trace}
  #range = null; // [from, to] the user zoomed to, or null
  #options = { unit: "", bounded: false, uirevision: "" };
  #stale = true; // a full draw is due
  #markers = false;
  #dtick = 1;
  #listening = false;

  /**
   * @param {HTMLElement} element  the Plotly graph div
   * @param {Function} onChange  called when the chart needs drawing (the user zoomed)
   */
  constructor(element, onChange) {
    this.#element = element;
    this.#onChange = onChange;
  }

  /**
   * What the chart shows: lines, x axis title (`unit`), a fixed [0, 1] axis (`bounded`) and
   * `uirevision` (the user's zoom survives draws until it changes). A change of lines or
   * options makes the next draw a full one.
   */
  show(lines, options) {
    const keys = (list) => list.map((line) => `${line.key}\u0000${line.name}\u0000${line.color}`);
    const changed =
      keys(lines).join() !== keys(this.#lines).join() ||
      lines.some((line, i) => line.series !== this.#lines[i].series) ||
      Object.entries(options).some(([name, value]) => this.#options[name] !== value);
    if (options.uirevision !== this.#options.uirevision) this.#range = null;
    if (changed) this.#stale = true;
    this.#lines = lines;
    this.#options = { ...this.#options, ...options };
  }

  /** Points of a line changed in place: draw it whole next time. */
  invalidate() {
    this.#stale = true;
  }

  /** Whether the chart has something to draw. */
  get hasWork() {
    return this.#stale || this.#lines.some((line, i) => line.series.length > this.#drawn[i].upTo);
  }

  /** Bring the chart up to date: new points appended, or a full draw when one is due. */
  draw() {
    const longest = Math.max(0, ...this.#lines.map((line) => line.series.length));
    const lastX = Math.max(1, ...this.#lines.map((line) => line.series.lastX ?? 1));
    const span = this.#range ? this.#range[1] - this.#range[0] : lastX;
    const regrown = this.#drawn.some((drawn) => drawn.points > 3 * BUCKETS);
    if (
      this.#stale ||
      regrown ||
      longest <= MARKER_LIMIT !== this.#markers ||
      wholeTickStep(span) !== this.#dtick
    ) {
      this.#drawAll(longest, span);
    } else {
      this.#extend();
    }
  }

  #drawAll(longest, span) {
    this.#stale = false;
    this.#markers = longest <= MARKER_LIMIT;
    this.#dtick = wholeTickStep(span);
    const [from, to] = this.#range ?? [null, null];
    this.#drawn = [];
    const traces = this.#lines.map((line) => {
      const { x, y } = minMaxPoints(line.series.xs, line.series.ys, from, to, BUCKETS);
      this.#drawn.push({ upTo: line.series.length, points: x.length });
      return {
        type: "scatter",
        mode: this.#markers ? "lines+markers" : "lines",
        name: line.name,
        x,
        y,
        line: { color: line.color, width: 2 },
        marker: { size: 6 },
        hovertemplate: "%{y:.4f}",
      };
    });
    const { unit, bounded, uirevision } = this.#options;
    const layout = baseLayout({
      height: 230,
      margin: { l: 48, r: 12, t: 8, b: 40 },
      uirevision, // keep the user's zoom while points arrive
      xaxis: { title: { text: unit }, dtick: this.#dtick, zeroline: false },
      yaxis: bounded ? { range: [0, 1.02], zeroline: false } : { zeroline: false },
      annotations: traces.length ? [] : [emptyNote("waiting for data")],
    });
    plotly().react(this.#element, traces, layout, PLOT_CONFIG);
    if (!this.#listening) {
      this.#listening = true;
      this.#element.on("plotly_relayout", (event) => this.#zoomed(event));
    }
  }

  #extend() {
    const update = { x: [], y: [] };
    const indices = [];
    this.#lines.forEach((line, i) => {
      const drawn = this.#drawn[i];
      if (line.series.length <= drawn.upTo) return;
      indices.push(i);
      update.x.push(line.series.xs.slice(drawn.upTo));
      update.y.push(line.series.ys.slice(drawn.upTo));
      drawn.points += line.series.length - drawn.upTo;
      drawn.upTo = line.series.length;
    });
    if (indices.length) plotly().extendTraces(this.#element, update, indices);
  }

  /** The user zoomed or panned (a new x range) or reset the view: draw that range again. */
  #zoomed(event) {
    const from = event["xaxis.range[0]"] ?? event["xaxis.range"]?.[0];
    const to = event["xaxis.range[1]"] ?? event["xaxis.range"]?.[1];
    if (from !== undefined && to !== undefined) this.#range = [Number(from), Number(to)];
    else if (event["xaxis.autorange"]) this.#range = null;
    else return;
    this.#stale = true;
    this.#onChange();
  }
}
