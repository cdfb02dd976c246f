// The per-client view of a federated run: a heatmap of one metric (client x round), how many
// clients took part in each round, and a table of one round (the latest, or the one picked on
// the heatmap) that flags stragglers (slow training) and outliers (a metric far from the
// other clients'), with each client's device and system figures.
//
// The heatmap and the bar chart show a window of WINDOW rounds, the latest ones until the
// user scrolls back with the slider, so what one update costs depends on the number of
// clients, never on the length of the run. Each of the three parts is a unit of the page's
// FrameLoop.

import { EVAL_COLOR, TRAIN_COLOR } from "./charts.js";
import { PLOT_CONFIG, baseLayout, wholeTickStep } from "./chart.js";
import { tableParts, tableRow } from "./dom.js";
import { formatNumber } from "./format.js";
import { compareMetrics, isSystem } from "./metrics.js";
import { METRICS, isDuration, lowerIsBetter, roundPhaseLabel } from "./protocol.js";
import { plotly } from "./plotly.js";
import { plottable, toNumber } from "./values.js";

/** Rounds in the heatmap and the bar chart at a time. */
const WINDOW = 30;
// The heatmap shows, until the user picks another: the clients' eval score (the first
// higher-is-better metric: accuracy), else their eval loss, else their fit loss.
const [SCORE] = METRICS.filter((name) => !lowerIsBetter(name));
const [LOSS] = METRICS.filter(lowerIsBetter);
const PREFERRED = [`evaluate|${SCORE}`, `evaluate|${LOSS}`, `train|${LOSS}`];
const PARTS = ["heatmap", "counts", "table"];

export class ClientView {
  #model = null;
  #choice = null; // "phase|metric" shown in the heatmap and flagged in the table
  #chosenByUser = false; // until then the preferred choice wins as soon as it appears
  #windowEnd = null; // the last round in the window; null: follow the latest
  #tableRound = null; // the round in the table; null: the latest of the window's phase
  #waiting = new Map(); // part -> since when it needs drawing
  #offered = new Set(); // the phases the picker offers

  constructor(section, onChange) {
    this.section = section;
    this.onChange = onChange;
    this.picker = section.querySelector("#client-metric");
    this.heatmap = section.querySelector("#client-heatmap");
    this.counts = section.querySelector("#clients-per-round");
    this.slider = section.querySelector("#client-window");
    this.windowText = section.querySelector("#client-window-text");
    this.latest = section.querySelector("#client-latest");
    this.table = section.querySelector("#client-table");
    this.caption = section.querySelector("#client-table-caption");
    this.picker.addEventListener("change", () => {
      this.#choice = this.picker.value;
      this.#chosenByUser = true;
      this.#redraw();
    });
    this.slider.addEventListener("input", () => {
      const rounds = this.#rounds();
      const end = Number(this.slider.value);
      this.#windowEnd = end >= rounds.length - 1 ? null : rounds[end];
      this.#redraw();
    });
    this.latest.addEventListener("click", () => {
      this.#windowEnd = null;
      this.#tableRound = null;
      this.#redraw();
    });
  }

  /** Show another run's clients (null: none). */
  show(model) {
    this.#model = model;
    this.#offered = new Set();
    this.#choice = null;
    this.#chosenByUser = false;
    this.#windowEnd = null;
    this.#tableRound = null;
    this.#redraw();
  }

  /**
   * The run's clients changed: new entries in `phases` (a Set), and the counts if `counts`;
   * with no argument, anything. Only the parts that show what changed are drawn again.
   */
  changed({ phases, counts } = { phases: null, counts: true }) {
    // A phase the picker does not offer yet may change what is shown: draw everything.
    if (phases && [...phases].some((phase) => !this.#offered.has(phase))) phases = null;
    const shown = (this.#choice ?? "|").split("|")[0];
    const parts = [];
    if (!phases || phases.has(shown)) parts.push("heatmap");
    // The table shows the phase's entries and the fit phase's times.
    if (!phases || phases.has(shown) || phases.has("train")) parts.push("table");
    if (counts) parts.push("counts");
    this.#redraw(parts);
  }

  /** Painter: since when the longest-waiting part needs drawing (see FrameLoop). */
  pending() {
    return this.#waiting.size ? Math.min(...this.#waiting.values()) : undefined;
  }

  /** Painter: draw the part that has waited longest. */
  step() {
    const [part] = [...this.#waiting].sort((a, b) => a[1] - b[1])[0];
    this.#waiting.delete(part);
    const model = this.#model;
    if (!model || model.clients.isEmpty) {
      this.section.hidden = true;
      this.#waiting.clear();
      return;
    }
    this.section.hidden = false;
    const choices = this.#updatePicker(model.clients);
    const [phase, metric] = (this.#choice ?? "|").split("|");
    if (part === "counts") this.#drawCounts(model, phase);
    else if (choices.length && part === "heatmap") this.#drawHeatmap(model, phase, metric);
    else if (choices.length && part === "table") this.#fillTable(model, phase, metric);
  }

  #redraw(parts = PARTS) {
    const now = performance.now();
    for (const part of parts) if (!this.#waiting.has(part)) this.#waiting.set(part, now);
    if (parts.length) this.onChange();
  }

  #rounds() {
    const phase = (this.#choice ?? "|").split("|")[0];
    return this.#model?.clients.rounds(phase) ?? [];
  }

  /** The rounds in the window, and the slider set to match. */
  #window(rounds) {
    let end = this.#windowEnd === null ? rounds.length - 1 : rounds.indexOf(this.#windowEnd);
    if (end < 0) end = rounds.length - 1;
    const start = Math.max(0, end - WINDOW + 1);
    const shown = rounds.slice(start, end + 1);
    this.slider.hidden = rounds.length <= WINDOW;
    this.slider.max = String(Math.max(0, rounds.length - 1));
    this.slider.min = String(Math.min(WINDOW - 1, rounds.length - 1));
    this.slider.value = String(end);
    const following = this.#windowEnd === null && this.#tableRound === null;
    this.latest.hidden = following;
    this.windowText.textContent = shown.length
      ? `rounds ${shown[0]}–${shown.at(-1)} of ${rounds.length}` +
        (this.#windowEnd === null ? " (latest)" : "")
      : "";
    return shown;
  }

  #updatePicker(clients) {
    this.#offered = new Set(clients.phases());
    const choices = [];
    for (const phase of clients.phases()) {
      const names = [...(clients.metricNames.get(phase) ?? [])].sort(compareMetrics);
      names.forEach((name) => choices.push(`${phase}|${name}`));
    }
    if (!this.#chosenByUser || !choices.includes(this.#choice)) {
      this.#choice = PREFERRED.find((choice) => choices.includes(choice)) ?? choices[0] ?? null;
    }
    const current = [...this.picker.options].map((option) => option.value);
    if (current.join() !== choices.join()) {
      this.picker.replaceChildren(
        ...choices.map((choice) => {
          const [phase, name] = choice.split("|");
          return new Option(`${roundPhaseLabel(phase)} · ${name}`, choice);
        }),
      );
    }
    this.picker.value = this.#choice ?? "";
    return choices;
  }

  #drawHeatmap(model, phase, metric) {
    const clients = model.clients;
    const ids = clients.clientIds(phase);
    const rounds = this.#window(clients.rounds(phase));
    const z = ids.map((id) =>
      rounds.map((round) => plottable(clients.entry(phase, id, round)?.metrics[metric])),
    );
    const showValues = ids.length * rounds.length <= 120;
    const trace = {
      type: "heatmap",
      x: rounds,
      y: ids,
      z,
      colorscale: "Viridis",
      reversescale: lowerIsBetter(metric), // the "good" end keeps the same colour
      texttemplate: showValues ? "%{z:.3g}" : "",
      hovertemplate: `client %{y}<br>round %{x}<br>${metric} %{z:.4f}<extra></extra>`,
      colorbar: { thickness: 12 },
      hoverongaps: false,
    };
    plotly().react(
      this.heatmap,
      [trace],
      baseLayout({
        title: {
          text: `${roundPhaseLabel(phase)} ${metric} per client`,
          x: 0.02,
          font: { size: 14 },
        },
        height: Math.min(640, Math.max(220, 60 + 26 * ids.length)), // many clients: thinner rows
        hovermode: "closest",
        xaxis: { title: { text: "round (click: show in the table)" }, type: "category" },
        yaxis: { title: { text: "client" }, type: "category", autorange: "reversed" },
        uirevision: model.runId,
      }),
      PLOT_CONFIG,
    );
    if (!this.heatmap.dataset.listening) {
      this.heatmap.dataset.listening = "true";
      this.heatmap.on("plotly_click", (event) => {
        const round = Number(event.points?.[0]?.x);
        if (!Number.isFinite(round)) return;
        this.#tableRound = round;
        this.#redraw();
      });
    }
  }

  #drawCounts(model, shownPhase) {
    const clients = model.clients;
    const fitFirst = (a, b) => (a === "train" ? -1 : b === "train" ? 1 : 0);
    const phases = [...clients.counts.keys()].sort(fitFirst);
    // The window of the heatmap's phase, or, before any client entry, of the counts alone.
    const all = clients.rounds(shownPhase).length
      ? clients.rounds(shownPhase)
      : [...new Set(phases.flatMap((phase) => [...clients.counts.get(phase).keys()]))].sort(
          (a, b) => a - b,
        );
    const rounds = this.#window(all);
    let most = 1;
    const traces = phases.map((phase) => {
      const perRound = clients.counts.get(phase);
      const y = rounds.map((round) => perRound.get(round) ?? null);
      most = Math.max(most, ...y.filter(Number.isFinite));
      return {
        type: "bar",
        name: roundPhaseLabel(phase),
        x: rounds,
        y,
        marker: { color: phase === "train" ? TRAIN_COLOR : EVAL_COLOR },
        hovertemplate: `%{y} clients<extra>${roundPhaseLabel(phase)}</extra>`,
      };
    });
    const expected = model.numClients ? ` (of ${model.numClients} connected)` : "";
    const span = rounds.length ? rounds.at(-1) - rounds[0] + 1 : 1;
    plotly().react(
      this.counts,
      traces,
      baseLayout({
        title: { text: `clients per round${expected}`, x: 0.02, font: { size: 14 } },
        showlegend: true,
        legend: { orientation: "h", x: 1, xanchor: "right", y: 1.15 },
        barmode: "group",
        hovermode: "x",
        // At most ten ticks on either axis, whatever the rounds and clients.
        xaxis: { title: { text: "round" }, tickformat: "d", dtick: wholeTickStep(span) },
        yaxis: { title: { text: "clients" }, rangemode: "tozero", dtick: wholeTickStep(most) },
        uirevision: model.runId,
      }),
      PLOT_CONFIG,
    );
  }

  #fillTable(model, phase, chosen) {
    const clients = model.clients;
    const rounds = clients.rounds(phase);
    const round = rounds.includes(this.#tableRound) ? this.#tableRound : rounds.at(-1);
    // Times come from the fit phase whichever phase is shown: stragglers stay visible. They
    // are the protocol's durations (sys_wall_time, train-time, ...).
    const timeNames = [...(clients.metricNames.get("train") ?? [])]
      .filter(isDuration)
      .sort(compareMetrics);
    const shownNames = [...(clients.metricNames.get(phase) ?? [])]
      .filter((name) => !timeNames.includes(name))
      .sort(compareMetrics);
    const systemNames = shownNames.filter(isSystem);
    const names = shownNames.filter((name) => !isSystem(name));
    const rows = clients.clientIds(phase).map((id) => ({
      id,
      entry: clients.entry(phase, id, round),
      fit: clients.entry("train", id, round),
    }));
    const answered = rows.filter((row) => row.entry && !row.entry.error);
    const timeOf = (row, name) => toNumber(row.fit?.metrics[name]);
    const valueOf = (row) => toNumber(row.entry?.metrics[chosen]);

    const body = rows.map((row) => {
      const notes = [];
      if (!row.entry) notes.push("no reply this round");
      else if (row.entry.error) notes.push(`failed: ${row.entry.error}`);
      const others = answered.filter((other) => other !== row);
      const slow = timeNames.filter((name) =>
        standsOut(
          timeOf(row, name),
          others.map((other) => timeOf(other, name)),
          0.5,
          "above",
        ),
      );
      if (slow.length) notes.push(`straggler (${slow.join(", ")})`);
      if (standsOut(valueOf(row), others.map(valueOf), 0.1, "either")) {
        notes.push(`outlier (${chosen})`);
      }
      const entry = row.entry ?? row.fit;
      const cells = [
        row.id,
        ...(clients.hasDevices ? [entry?.device ?? "—"] : []),
        row.entry ? String(row.entry.numExamples) : "—",
        ...timeNames.map((name) => formatNumber(row.fit?.metrics[name])),
        ...systemNames.map((name) => formatNumber(row.entry?.metrics[name])),
        ...names.map((name) => formatNumber(row.entry?.metrics[name])),
        notes.join("; "),
      ];
      const failed = !row.entry || row.entry.error;
      return { cells, flag: failed ? "no-reply" : notes.length ? "flagged" : "" };
    });

    const latest = round === rounds.at(-1) ? " (latest)" : "";
    this.caption.textContent = `${roundPhaseLabel(phase)}, round ${round}${latest}`;
    const header = [
      "client",
      ...(clients.hasDevices ? ["device"] : []),
      "examples",
      ...timeNames,
      ...systemNames,
      ...names,
      "note",
    ];
    // With many clients, the ones to look at come first: failed, then flagged, then the rest.
    const rank = { "no-reply": 0, flagged: 1, "": 2 };
    body.sort((a, b) => rank[a.flag] - rank[b.flag]); // stable: client order within each
    const rowsShown = body.map(({ cells, flag }) => {
      const tr = tableRow("td", cells);
      if (flag) tr.className = flag;
      return tr;
    });
    this.table.replaceChildren(this.table.caption, ...tableParts(header, rowsShown));
  }
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * Whether `value` is far from the other clients' values: more than three (scaled) median
 * absolute deviations from their median, and more than `relative` of that median (so a
 * handful of clients with near-identical values does not flag noise).
 */
function standsOut(value, others, relative, direction) {
  const peers = others.filter(Number.isFinite);
  if (!Number.isFinite(value) || peers.length === 0) return false;
  const centre = median(peers);
  const spread = 1.4826 * median(peers.map((peer) => Math.abs(peer - centre)));
  const distance = direction === "above" ? value - centre : Math.abs(value - centre);
  return distance > Math.max(3 * spread, relative * Math.abs(centre), 1e-12);
}
