// The metric charts: one Plotly chart per metric, one line per series.
//
// New points reach a chart through one Plotly.extendTraces call per animation frame (the
// renderer batches them); a chart is redrawn whole (Plotly.react) only when a line appears
// or an existing point changes.

import {
  EPOCH_PHASES,
  EVAL_SOURCES,
  FRACTION_METRICS,
  METRICS,
  ROUND_PHASES,
} from "./protocol.js";

/* global Plotly */

export const TRAIN_COLOR = "#2563eb";
export const EVAL_COLOR = "#ea580c";
// Line colours by series name (the protocol's): training blue, evaluation orange, the
// server's own evaluation green.
export const SERIES_COLORS = {
  [ROUND_PHASES.train]: TRAIN_COLOR,
  [EPOCH_PHASES.train]: TRAIN_COLOR,
  [ROUND_PHASES.evaluate]: EVAL_COLOR,
  [EPOCH_PHASES.val]: EVAL_COLOR,
  [EVAL_SOURCES.server]: "#16a34a",
};
// Past this many points on a line, markers only clutter it (and cost SVG nodes).
const MARKER_LIMIT = 60;
export const PLOT_CONFIG = {
  displaylogo: false,
  responsive: true,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"],
};

/** The layout every chart of the page shares. */
export function baseLayout(overrides = {}) {
  return {
    height: 250,
    margin: { l: 48, r: 12, t: 36, b: 40 },
    font: { family: "system-ui, -apple-system, Segoe UI, sans-serif", size: 12, color: "#334155" },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    legend: { orientation: "h", x: 1, xanchor: "right", y: 1.15 },
    hovermode: "x unified",
    ...overrides,
  };
}

export class MetricCharts {
  #plots = new Map(); // metric -> Plotly graph div
  #traceNames = new Map(); // metric -> series names in trace order
  #markers = new Map(); // metric -> whether its lines still show markers
  #dticks = new Map(); // metric -> x tick spacing (rounds and epochs are whole numbers)

  constructor(container) {
    for (const metric of METRICS) {
      const figure = document.createElement("figure");
      figure.className = "card chart";
      const plot = document.createElement("div");
      plot.id = `chart-${metric}`;
      plot.dataset.metric = metric;
      figure.append(plot);
      container.append(figure);
      this.#plots.set(metric, plot);
    }
  }

  /** Draw every chart from the model's full state (a new run, or the first frame). */
  redrawAll(model) {
    METRICS.forEach((metric) => this.#redraw(metric, model));
  }

  /** Apply one frame's worth of changes (from RunModel.takeChanges). */
  update(model, changes) {
    for (const metric of METRICS) {
      const pending = changes.points.get(metric);
      const names = this.#traceNames.get(metric) ?? [];
      const newLine = pending && [...pending.keys()].some((name) => !names.includes(name));
      if (changes.rewrite.has(metric) || newLine) {
        this.#redraw(metric, model);
      } else if (pending) {
        this.#extend(metric, model, names, pending);
      }
    }
  }

  #extend(metric, model, names, pending) {
    const plot = this.#plots.get(metric);
    const update = { x: [], y: [] };
    const indices = [];
    for (const [name, points] of pending) {
      indices.push(names.indexOf(name));
      update.x.push(points.x);
      update.y.push(points.y);
    }
    Plotly.extendTraces(plot, update, indices);
    if (this.#markers.get(metric) && longestLine(model, metric) > MARKER_LIMIT) {
      this.#markers.set(metric, false);
      Plotly.restyle(plot, { mode: "lines" });
    }
    const dtick = wholeTickStep(model, metric);
    if (dtick !== this.#dticks.get(metric)) {
      this.#dticks.set(metric, dtick);
      Plotly.relayout(plot, { "xaxis.dtick": dtick });
    }
  }

  #redraw(metric, model) {
    const series = model.seriesOf(metric);
    const markers = longestLine(model, metric) <= MARKER_LIMIT;
    this.#traceNames.set(
      metric,
      series.map(([name]) => name),
    );
    this.#markers.set(metric, markers);
    this.#dticks.set(metric, wholeTickStep(model, metric));
    // Copies: extendTraces grows the arrays it was given, and these belong to the model.
    const traces = series.map(([name, line]) => ({
      type: "scatter",
      mode: markers ? "lines+markers" : "lines",
      name,
      x: line.xs.slice(),
      y: line.ys.slice(),
      line: { color: SERIES_COLORS[name], width: 2 },
      marker: { size: 6 },
      hovertemplate: "%{y:.4f}",
    }));
    const layout = baseLayout({
      title: { text: metric, x: 0.02, font: { size: 14 } },
      uirevision: model.runId, // keep the user's zoom while points arrive
      xaxis: { title: { text: model.stepUnit }, dtick: this.#dticks.get(metric), zeroline: false },
      yaxis: FRACTION_METRICS.has(metric)
        ? { range: [0, 1.02], zeroline: false }
        : { zeroline: false },
      annotations: traces.length ? [] : [emptyNote("waiting for data")],
    });
    Plotly.react(this.#plots.get(metric), traces, layout, PLOT_CONFIG);
  }
}

/** A centred grey note for a chart with nothing to show yet. */
export function emptyNote(text) {
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

/** A tick step of 1, 2, 5, 10, 20, 50, ... giving at most ten ticks over the x range. */
function wholeTickStep(model, metric) {
  const last = Math.max(1, ...model.seriesOf(metric).map(([, line]) => line.xs.at(-1) ?? 1));
  for (let step = 1; ; step *= 10) {
    for (const multiple of [1, 2, 5]) {
      if (last / (step * multiple) <= 10) return step * multiple;
    }
  }
}

function longestLine(model, metric) {
  return Math.max(0, ...model.seriesOf(metric).map(([, line]) => line.xs.length));
}
