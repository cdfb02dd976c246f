// The per-client view of a federated run: a heatmap of one metric (client x round), how many
// clients took part in each round, and a table of the latest round that flags stragglers
// (slow training) and outliers (a metric far from the other clients').

import { naturalCompare, plottable, toNumber } from "./run.js";
import { EVAL_COLOR, PLOT_CONFIG, TRAIN_COLOR, baseLayout } from "./charts.js";
import { formatNumber } from "./format.js";
import { METRICS, isDuration, lowerIsBetter, roundPhaseLabel } from "./protocol.js";

/* global Plotly */

// The heatmap shows, until the user picks another: the clients' eval score (the first
// higher-is-better metric: accuracy), else their eval loss, else their fit loss.
const [SCORE] = METRICS.filter((name) => !lowerIsBetter(name));
const [LOSS] = METRICS.filter(lowerIsBetter);
const PREFERRED = [`evaluate|${SCORE}`, `evaluate|${LOSS}`, `train|${LOSS}`];

export class ClientView {
  #choice = null; // "phase|metric" shown in the heatmap and flagged in the table
  #chosenByUser = false; // until then the preferred choice wins as soon as it appears
  #model = null;

  constructor(section) {
    this.section = section;
    this.picker = section.querySelector("#client-metric");
    this.heatmap = section.querySelector("#client-heatmap");
    this.counts = section.querySelector("#clients-per-round");
    this.table = section.querySelector("#client-table");
    this.caption = section.querySelector("#client-table-caption");
    this.picker.addEventListener("change", () => {
      this.#choice = this.picker.value;
      this.#chosenByUser = true;
      this.update(this.#model);
    });
  }

  reset() {
    this.#choice = null;
    this.#chosenByUser = false;
    this.#model = null;
    this.section.hidden = true;
  }

  update(model) {
    this.#model = model;
    if (!model || model.clients.isEmpty) {
      this.section.hidden = true;
      return;
    }
    this.section.hidden = false;
    const choices = this.#updatePicker(model.clients);
    if (choices.length) {
      const [phase, metric] = this.#choice.split("|");
      this.#drawHeatmap(model, phase, metric);
      this.#fillTable(model, phase, metric);
    }
    this.#drawCounts(model);
  }

  #updatePicker(clients) {
    const choices = [];
    for (const phase of clients.phases()) {
      const names = [...(clients.metricNames.get(phase) ?? [])].sort(byMetricOrder);
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
    const rounds = clients.rounds(phase);
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
    Plotly.react(
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
        xaxis: { title: { text: "round" }, type: "category" },
        yaxis: { title: { text: "client" }, type: "category", autorange: "reversed" },
        uirevision: model.runId,
      }),
      PLOT_CONFIG,
    );
  }

  #drawCounts(model) {
    const clients = model.clients;
    const fitFirst = (a, b) => (a === "train" ? -1 : b === "train" ? 1 : 0);
    const phases = [...clients.counts.keys()].sort(fitFirst);
    const traces = phases.map((phase) => {
      const perRound = clients.counts.get(phase);
      const rounds = [...perRound.keys()].sort((a, b) => a - b);
      return {
        type: "bar",
        name: roundPhaseLabel(phase),
        x: rounds,
        y: rounds.map((round) => perRound.get(round)),
        marker: { color: phase === "train" ? TRAIN_COLOR : EVAL_COLOR },
        hovertemplate: "%{y} clients",
      };
    });
    const expected = model.numClients ? ` (of ${model.numClients} connected)` : "";
    Plotly.react(
      this.counts,
      traces,
      baseLayout({
        title: { text: `clients per round${expected}`, x: 0.02, font: { size: 14 } },
        barmode: "group",
        xaxis: { title: { text: "round" }, tickformat: "d", dtick: 1 },
        yaxis: { title: { text: "clients" }, rangemode: "tozero", dtick: 1 },
        uirevision: model.runId,
      }),
      PLOT_CONFIG,
    );
  }

  #fillTable(model, phase, chosen) {
    const clients = model.clients;
    const rounds = clients.rounds(phase);
    const round = rounds[rounds.length - 1];
    // Training time comes from the fit phase whichever phase is shown: stragglers stay visible.
    const timeNames = [...(clients.metricNames.get("train") ?? [])].filter(isDuration).sort();
    const names = [...(clients.metricNames.get(phase) ?? [])]
      .filter((name) => !timeNames.includes(name))
      .sort(byMetricOrder);
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
      for (const name of timeNames) {
        const times = others.map((other) => timeOf(other, name));
        if (standsOut(timeOf(row, name), times, 0.5, "above")) notes.push(`straggler (${name})`);
      }
      if (standsOut(valueOf(row), others.map(valueOf), 0.1, "either")) {
        notes.push(`outlier (${chosen})`);
      }
      const cells = [
        row.id,
        row.entry ? String(row.entry.numExamples) : "—",
        ...timeNames.map((name) => formatNumber(row.fit?.metrics[name])),
        ...names.map((name) => formatNumber(row.entry?.metrics[name])),
        notes.join("; "),
      ];
      const failed = !row.entry || row.entry.error;
      return { cells, flag: failed ? "no-reply" : notes.length ? "flagged" : "" };
    });

    this.caption.textContent = `${roundPhaseLabel(phase)}, round ${round}`;
    const thead = document.createElement("thead");
    thead.append(tableRow("th", ["client", "examples", ...timeNames, ...names, "note"]));
    const tbody = document.createElement("tbody");
    for (const { cells, flag } of body) {
      const tr = tableRow("td", cells);
      if (flag) tr.className = flag;
      tbody.append(tr);
    }
    this.table.replaceChildren(this.table.caption, thead, tbody);
  }
}

function tableRow(cellTag, cells) {
  const tr = document.createElement("tr");
  for (const text of cells) {
    const cell = document.createElement(cellTag);
    cell.textContent = text;
    tr.append(cell);
  }
  return tr;
}

/** Six standard metrics first, then the rest alphabetically. */
function byMetricOrder(a, b) {
  const rank = (name) => (METRICS.includes(name) ? METRICS.indexOf(name) : METRICS.length);
  return rank(a) - rank(b) || naturalCompare(a, b);
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
