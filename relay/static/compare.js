// The comparison of 2 to 10 runs: each metric's chart overlays one line per run (its
// evaluation, or its training, as picked), each run in its own colour, named in the legend
// with the settings that tell it apart; a table lists the settings (training_mode's config)
// that differ between the runs. The runs keep updating while they train.

import { ChartGrid } from "./charts.js";
import { swatch, tableParts, tableRow } from "./dom.js";
import { compareMetrics } from "./metrics.js";
import { EPOCH_PHASES, EVAL_SOURCES, MODE, ROUND_PHASES, statusLabel } from "./protocol.js";

/** How many runs a comparison takes. */
export const MIN_COMPARED = 2;
export const MAX_COMPARED = 10;
// One colour per run (D3's category10, as Plotly's own default).
const PALETTE = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
];
/**
 * The line each run gets, by choice: its evaluation (the server's own evaluation of the global
 * model where it has one, else the clients', else a centralized run's val) or its training.
 */
const LINE_CHOICES = {
  evaluation: [EVAL_SOURCES.server, ROUND_PHASES.evaluate, EPOCH_PHASES.val],
  training: [ROUND_PHASES.train, EPOCH_PHASES.train],
};
// Settings named in a run's legend entry, at most.
const KEY_SETTINGS = 3;

// A setting's value as text (strings as they are); JSON tells values apart ("1" from 1).
const shown = (value) =>
  value === undefined ? "—" : typeof value === "string" ? value : JSON.stringify(value);
const asKey = (value) => (value === undefined ? "" : JSON.stringify(value));

/**
 * The settings of `configs` (one object or null per run): those whose values differ between
 * the runs (absent counts as a value), as [{name, values}], and the names of those that agree.
 */
function differingSettings(configs) {
  const names = [...new Set(configs.flatMap((config) => Object.keys(config ?? {})))].sort();
  const differ = [];
  const same = [];
  for (const name of names) {
    const values = configs.map((config) => config?.[name]);
    if (new Set(values.map(asKey)).size > 1) differ.push({ name, values });
    else same.push(name);
  }
  return { differ, same };
}

export class CompareView {
  #models = [];
  #line = "evaluation";
  #grid;
  #shownRuns = "";
  #shownSettings = "";
  #differ = [];

  /**
   * @param {HTMLElement} section  the compare view's section
   * @param {Function} onChange  called when something needs drawing
   */
  constructor(section, onChange) {
    this.section = section;
    this.runsTable = section.querySelector("#compare-runs");
    this.settingsTable = section.querySelector("#compare-settings");
    this.settingsNote = section.querySelector("#compare-same");
    this.picker = section.querySelector("#compare-line");
    this.#grid = new ChartGrid(section.querySelector("#compare-charts"), onChange, {
      idPrefix: "compare-chart-",
    });
    this.picker.replaceChildren(...Object.keys(LINE_CHOICES).map((name) => new Option(name, name)));
    this.picker.addEventListener("change", () => {
      this.#line = this.picker.value;
      this.section.dispatchEvent(new CustomEvent("linechange", { detail: this.#line }));
      onChange(); // the source reads the choice: the next refresh gives each chart its lines
    });
  }

  /** Which line each run gets ("evaluation" or "training"). */
  get line() {
    return this.#line;
  }

  /** Compare these runs' models (in this order), drawing `line` of each. */
  show(models, line) {
    this.#models = models;
    this.#line = Object.hasOwn(LINE_CHOICES, line) ? line : "evaluation";
    this.picker.value = this.#line;
    this.#shownRuns = this.#shownSettings = "";
    this.#grid.setSource(this.#source());
  }

  /** Bring the tables, the legend and the charts' lines up to date (cheap; every frame). */
  refresh(runList, rewritten) {
    this.#showSettings();
    this.#showRuns(runList);
    this.#grid.invalidate(rewritten);
    this.#grid.sync();
  }

  /** Painter (see FrameLoop). */
  pending() {
    return this.#grid.pending();
  }

  /** Painter (see FrameLoop). */
  step() {
    this.#grid.step();
  }

  #label(index) {
    const model = this.#models[index];
    const settings = this.#differ
      .filter(({ values }) => values[index] !== undefined)
      .slice(0, KEY_SETTINGS)
      .map(({ name, values }) => `${name}=${shown(values[index])}`);
    return settings.length ? `${model.runId} (${settings.join(", ")})` : model.runId;
  }

  #source() {
    const models = this.#models;
    const pick = (model, metric) => {
      const lines = model.series.get(metric);
      const name = LINE_CHOICES[this.#line].find((series) => lines?.has(series));
      return name && { name, series: lines.get(name) };
    };
    const modes = new Set(models.map((model) => model.mode).filter(Boolean));
    return {
      metrics: () =>
        [...new Set(models.flatMap((model) => model.metricNames()))].sort(compareMetrics),
      lines: (metric) =>
        models.flatMap((model, i) => {
          const picked = pick(model, metric);
          if (!picked) return [];
          const name = `${this.#label(i)} · ${picked.name}`;
          return [{ key: model.runId, name, series: picked.series, color: PALETTE[i] }];
        }),
      legend: () => models.map((_, i) => ({ name: this.#label(i), color: PALETTE[i] })),
      unit: modes.size === 1 && modes.has(MODE.centralized) ? "epoch" : "round",
      uirevision: models.map((model) => model.runId).join(","),
    };
  }

  #showSettings() {
    const configs = this.#models.map((model) => model.config);
    const signature = JSON.stringify(configs);
    if (signature === this.#shownSettings) return;
    this.#shownSettings = signature;
    const { differ, same } = differingSettings(configs);
    this.#differ = differ;
    const header = ["setting", ...this.#models.map((model) => model.runId)];
    const rows = differ.map(({ name, values }) => tableRow("td", [name, ...values.map(shown)]));
    this.settingsTable.replaceChildren(...tableParts(header, rows));
    this.settingsTable.hidden = differ.length === 0;
    const reported = configs.some(Boolean);
    this.settingsNote.textContent = !reported
      ? "These runs reported no settings."
      : differ.length === 0
        ? "These runs have the same settings."
        : same.length
          ? `Also set, the same in every run: ${same.join(", ")}.`
          : "";
  }

  #showRuns(runList) {
    const cells = this.#models.map((model, i) => {
      const status = runList.get(model.runId)?.status ?? model.status;
      const progress =
        model.step === null
          ? "—"
          : `${model.stepUnit} ${model.step}${model.totalSteps ? ` of ${model.totalSteps}` : ""}`;
      return [this.#label(i), statusLabel(status), progress, PALETTE[i], status];
    });
    const signature = JSON.stringify(cells);
    if (signature === this.#shownRuns) return;
    this.#shownRuns = signature;
    const rows = cells.map(([label, status, progress, color, state]) => {
      const tr = tableRow("td", [label, status, progress]);
      tr.cells[0].prepend(swatch(color));
      tr.cells[1].dataset.status = state;
      return tr;
    });
    this.runsTable.replaceChildren(...tableParts(["run", "status", "progress"], rows));
  }
}
