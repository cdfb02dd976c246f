// The metric charts of a view: one chart per metric, in groups by name prefix, with a legend
// shared by all of them; with many metrics, a filter box and folded groups.
//
// Only charts that can be seen are drawn: a chart in a folded group, filtered out, or
// scrolled far out of the window costs no Plotly work until it is shown (with 30 metrics,
// a live round redraws the few charts on screen, not all 30). The grid draws one chart per
// step (see FrameLoop), the first in page order that needs it, so a frame never draws more
// than its budget allows and the first charts are current first.

import { LineChart } from "./chart.js";
import { swatch } from "./dom.js";
import { MAIN_GROUP, groupRank, groupTitle, isBounded, metricGroup } from "./metrics.js";
import { EPOCH_PHASES, EVAL_SOURCES, ROUND_PHASES } from "./protocol.js";

export const TRAIN_COLOR = "#2563eb";
export const EVAL_COLOR = "#ea580c";
// Line colours by series name (the protocol's): training blue, evaluation orange, the
// server's own evaluation green.
const SERIES_COLORS = {
  [ROUND_PHASES.train]: TRAIN_COLOR,
  [EPOCH_PHASES.train]: TRAIN_COLOR,
  [ROUND_PHASES.evaluate]: EVAL_COLOR,
  [EPOCH_PHASES.val]: EVAL_COLOR,
  [EVAL_SOURCES.server]: "#16a34a",
};
const OTHER_COLOR = "#7c3aed";
/** From this many metrics on, the grid offers a filter and folds all but the main group. */
const MANY_METRICS = 30;
// A chart waiting this long (ms) is drawn before the charts above it.
const STARVE_MS = 500;
// Charts within this distance of the window are drawn as if on screen (scrolling is smooth).
const NEAR_PX = 400;

/**
 * What a grid draws.
 * @typedef {object} ChartSource
 * @property {() => string[]} metrics  the metrics to chart, in page order
 * @property {(metric: string) => import("./chart.js").Line[]} lines
 * @property {() => {name: string, color: string}[]} legend
 * @property {string} unit  the x axis title (round, epoch)
 * @property {string} uirevision  a new value resets the user's zoom
 */

/** The single run's source: one line per series (fit, eval, central eval; train, val). */
export function runSource(model) {
  const lines = (metric) =>
    model.seriesOf(metric).map(([name, series]) => ({
      key: name,
      name,
      series,
      color: SERIES_COLORS[name] ?? OTHER_COLOR,
    }));
  return {
    metrics: () => model.metricNames(),
    lines,
    legend: () => {
      const names = new Set();
      for (const metric of model.metricNames()) lines(metric).forEach((line) => names.add(line.name));
      return [...names].map((name) => ({ name, color: SERIES_COLORS[name] ?? OTHER_COLOR }));
    },
    get unit() {
      return model.stepUnit; // known once the run says (or shows) its mode
    },
    uirevision: model.runId ?? "",
  };
}

class Group {
  constructor(name, container) {
    this.name = name;
    this.element = document.createElement("details");
    this.element.className = "chart-group";
    this.element.dataset.group = name;
    this.summary = document.createElement("summary");
    this.grid = document.createElement("div");
    this.grid.className = "charts";
    this.element.append(this.summary, this.grid);
    container.append(this.element);
    this.chosen = null; // open or folded by the user (null: the grid's default)
    this.summary.addEventListener("click", () => {
      this.chosen = !this.element.open; // the click is about to toggle it
    });
  }
}

export class ChartGrid {
  #container;
  #groupsBox;
  #legend;
  #filter;
  #onChange;
  #groups = new Map(); // group name -> Group
  #charts = new Map(); // metric -> {chart, figure, group}, in page order
  #waiting = new Map(); // LineChart -> when it began to need drawing
  #source = null;
  #many = false; // MANY_METRICS or more: groups other than the main one start folded
  #pinned; // metrics charted even before any data (the protocol's six, on a run's page)
  #idPrefix;
  #near = new Set(); // figures within NEAR_PX of the window
  #unplaced = new Set(); // figures the observer has not reported on yet
  #observer = new IntersectionObserver((entries) => this.#scrolled(entries), {
    rootMargin: `${NEAR_PX}px 0px`,
  });

  /**
   * @param {HTMLElement} container  where the legend, filter and groups go
   * @param {Function} onChange  called when something needs drawing (zoom, unfold, filter)
   * @param {object} options  pinned: metrics that get a chart even with no data yet;
   *   idPrefix: each chart's element id is this + the metric (ids stay unique on the page)
   */
  constructor(container, onChange, { pinned = [], idPrefix = "chart-" } = {}) {
    this.#container = container;
    this.#onChange = onChange;
    this.#pinned = pinned;
    this.#idPrefix = idPrefix;
    const tools = document.createElement("div");
    tools.className = "chart-tools";
    this.#legend = document.createElement("div");
    this.#legend.className = "legend";
    this.#filter = document.createElement("input");
    this.#filter.type = "search";
    this.#filter.className = "chart-filter";
    this.#filter.placeholder = "Filter metrics";
    this.#filter.setAttribute("aria-label", "Filter metrics");
    this.#filter.hidden = true;
    this.#filter.addEventListener("input", () => this.#applyFilter());
    tools.append(this.#legend, this.#filter);
    this.#groupsBox = document.createElement("div");
    container.append(tools, this.#groupsBox);
    container.addEventListener("toggle", () => this.#onChange(), true); // a group (un)folded
  }

  /** Chart another source (another run, another comparison): every chart is drawn anew. */
  setSource(source) {
    this.#source = source;
    this.#groups.forEach((group) => group.element.remove());
    this.#groups.clear();
    this.#charts.clear();
    this.#waiting.clear();
    this.#observer.disconnect();
    this.#near.clear();
    this.#unplaced.clear();
    this.sync();
  }

  /** Add charts for metrics that appeared; refresh every visible chart's lines and legend. */
  sync() {
    const metrics = [...new Set([...this.#pinned, ...this.#source.metrics()])];
    if (metrics.length !== this.#charts.size) this.#addCharts(metrics);
    const legend = this.#source.legend();
    const text = legend.map((entry) => entry.name).join("\u0000");
    if (this.#legend.dataset.names !== text) {
      this.#legend.dataset.names = text;
      this.#legend.replaceChildren(...legend.map(legendEntry));
    }
    for (const [metric, { chart, figure }] of this.#charts) {
      if (!this.#isVisible(figure)) continue;
      const lines = this.#source.lines(metric);
      const low = Math.min(...lines.map((line) => line.series.low));
      const high = Math.max(...lines.map((line) => line.series.high));
      chart.show(lines, {
        unit: this.#source.unit,
        bounded: isBounded(metric, low, high),
        uirevision: this.#source.uirevision,
      });
    }
  }

  /** Charts of these metrics had points changed in place: draw them whole. */
  invalidate(metrics) {
    metrics.forEach((metric) => this.#charts.get(metric)?.chart.invalidate());
  }

  /** Painter: since when the longest-waiting visible chart needs drawing (see FrameLoop). */
  pending() {
    const now = performance.now();
    let oldest;
    for (const { chart, figure } of this.#charts.values()) {
      if (!chart.hasWork || !this.#isVisible(figure)) {
        this.#waiting.delete(chart);
        continue;
      }
      if (!this.#waiting.has(chart)) this.#waiting.set(chart, now);
      oldest = Math.min(oldest ?? Infinity, this.#waiting.get(chart));
    }
    return oldest;
  }

  /**
   * Painter: draw the first chart in page order that needs it, so the first charts of a live
   * update are current first; but a chart that has waited STARVE_MS goes first, so a stream
   * of updates to the first charts never keeps the last ones waiting.
   */
  step() {
    const now = performance.now();
    let next;
    for (const { chart } of this.#charts.values()) {
      const since = this.#waiting.get(chart);
      if (since === undefined) continue;
      if (next === undefined) next = chart;
      if (now - since > STARVE_MS && since < this.#waiting.get(next)) next = chart;
    }
    this.#waiting.delete(next);
    next?.draw();
  }

  #isVisible(figure) {
    const group = figure.closest("details");
    return !figure.hidden && !group.hidden && group.open && this.#near.has(figure);
  }

  /** Whether the observer has placed every chart (near the window or not) since it was added. */
  get settled() {
    return this.#unplaced.size === 0;
  }

  /** Figures came near the window or left it (or were placed): those near are drawn now. */
  #scrolled(entries) {
    let changed = false;
    for (const { target, isIntersecting } of entries) {
      if (isIntersecting) this.#near.add(target);
      else this.#near.delete(target);
      const placed = this.#unplaced.delete(target);
      changed = changed || isIntersecting || placed;
    }
    if (changed) this.#onChange();
  }

  #addCharts(metrics) {
    this.#many = metrics.length >= MANY_METRICS;
    this.#filter.hidden = !this.#many;
    for (const metric of metrics) {
      if (this.#charts.has(metric)) continue;
      const group = this.#group(metricGroup(metric));
      const figure = document.createElement("figure");
      figure.className = "card chart";
      const caption = document.createElement("figcaption");
      caption.textContent = metric;
      const plot = document.createElement("div");
      plot.id = `${this.#idPrefix}${metric}`;
      plot.dataset.metric = metric;
      figure.append(caption, plot);
      this.#unplaced.add(figure);
      this.#observer.observe(figure);
      // Keep the group's charts in page order (the metrics list is in page order).
      const after = metrics.slice(0, metrics.indexOf(metric)).reverse();
      const previous = after.map((name) => this.#charts.get(name)).find((c) => c?.group === group);
      if (previous) previous.figure.after(figure);
      else group.grid.prepend(figure);
      this.#charts.set(metric, { chart: new LineChart(plot, this.#onChange), figure, group });
    }
    this.#charts = new Map(metrics.map((metric) => [metric, this.#charts.get(metric)])); // page order
    for (const group of this.#groups.values()) {
      const count = [...this.#charts.values()].filter((c) => c.group === group).length;
      group.summary.textContent = `${groupTitle(group.name)} (${count})`;
    }
    // Group headings only help when there is more than one group.
    this.#container.classList.toggle("grouped", this.#groups.size > 1);
    this.#applyFilter();
  }

  #group(name) {
    if (!this.#groups.has(name)) {
      const group = new Group(name, this.#groupsBox);
      this.#groups.set(name, group);
      const ordered = [...this.#groups.values()].sort((a, b) => groupRank(a.name) - groupRank(b.name));
      this.#groupsBox.append(...ordered.map((g) => g.element));
    }
    return this.#groups.get(name);
  }

  /**
   * Show only the charts whose name holds the filter text and open the groups that have
   * some; with no filter, each group is as the user left it, else as the grid's default.
   */
  #applyFilter() {
    const text = this.#filter.value.trim().toLowerCase();
    const shown = new Map();
    for (const [metric, { figure, group }] of this.#charts) {
      figure.hidden = Boolean(text) && !metric.toLowerCase().includes(text);
      if (!figure.hidden) shown.set(group, (shown.get(group) ?? 0) + 1);
    }
    for (const group of this.#groups.values()) {
      group.element.hidden = Boolean(text) && !shown.has(group);
      const folded = this.#many && group.name !== MAIN_GROUP;
      group.element.open = text ? shown.has(group) : (group.chosen ?? !folded);
    }
    this.#onChange();
  }
}

function legendEntry({ name, color }) {
  const entry = document.createElement("span");
  entry.className = "legend-entry";
  const label = document.createElement("span");
  label.textContent = name;
  entry.append(swatch(color), label);
  return entry;
}
