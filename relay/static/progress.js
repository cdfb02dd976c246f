// "Round in progress": the clients' own client_progress reports while a round runs.
//
// RoundProgress (the model's part, no page) holds, for the round under way, each client's
// latest report, its timing and its running training loss per local epoch. ProgressView (a
// unit of the page's FrameLoop) shows one row per client: a progress bar, phase, epoch k/n,
// running loss, examples/s, time since its last report, and a straggler flag; a row's
// "curves" button opens a small chart of that client's running loss over the batches of each
// epoch, drawn only while open. Rows are created once per client and round and updated in
// place (only the cells whose text changed), so 100 clients reporting twice a second cost a
// few hundred text writes a frame, never a rebuilt table. The round's round_end clears it.
//
// Stragglers (see docs/dashboard.md): a client whose projected finish of the phase, from the
// pace since its first report of the phase, lies more than STRAGGLER_FACTOR x the median of
// the other clients' projected finishes after the phase began; or one not done that has been
// silent for more than SILENT_FACTOR x its usual report interval (at least SILENT_FLOOR_MS).

import { PLOT_CONFIG, baseLayout } from "./chart.js";
import { formatDuration, formatNumber } from "./format.js";
import { METRICS, lowerIsBetter, roundPhaseLabel } from "./protocol.js";
import { plotly } from "./plotly.js";
import { naturalCompare, toNumber } from "./values.js";

const [LOSS] = METRICS.filter(lowerIsBetter); // the running loss the rows and curves show
const TRAIN = "train"; // the client_progress phase whose epochs get curves
export const STRAGGLER_FACTOR = 1.5;
export const SILENT_FACTOR = 3;
export const SILENT_FLOOR_MS = 5000;
// A projection needs this much of the phase seen (first report to latest).
const MIN_PROJECTION_MS = 1000;

/** Overall progress in [0, 1]: ((epoch - 1) + batch / num_batches) / num_epochs. */
export function overall({ epoch, num_epochs: epochs, batch, num_batches: batches }) {
  const within = batch >= batches ? 1 : batch / batches;
  return Math.min(1, Math.max(0, (epoch - 1 + within) / epochs));
}

/** The clients' progress in the round under way (part of a RunModel). */
export class RoundProgress {
  round = null; // the round under way, or null
  clients = new Map(); // client_id -> client state
  ended = -Infinity; // the latest round that ended: its late reports are dropped
  dirty = new Set(); // client ids changed since the view last looked
  dirtySince; // performance.now() of the oldest unseen change
  cleared = false; // the rows must go (a round ended or another began)

  /** Take one client_progress message's data, sent at `sentMs`, received at `receivedMs`. */
  apply(data, sentMs, receivedMs) {
    const round = data.round;
    if (!Number.isInteger(round) || round <= this.ended) return;
    if (this.round === null || round > this.round) this.#reset(round);
    else if (round < this.round) return;
    const id = String(data.client_id);
    let client = this.clients.get(id);
    if (!client) {
      client = { id, reports: 0, intervalMs: null, curves: new Map(), phase: null };
      this.clients.set(id, client);
    }
    const fraction = overall(data);
    if (client.phase !== data.phase) {
      client.phase = data.phase;
      client.phaseStart = { ms: sentMs, fraction };
    }
    if (client.sentMs !== undefined && Number.isFinite(sentMs) && sentMs >= client.sentMs) {
      const gap = sentMs - client.sentMs;
      client.intervalMs = client.intervalMs === null ? gap : 0.7 * client.intervalMs + 0.3 * gap;
    }
    client.reports += 1;
    client.sentMs = sentMs;
    client.receivedMs = receivedMs;
    client.data = data;
    client.fraction = fraction;
    const loss = toNumber(data.metrics?.[LOSS]);
    client.loss = data.metrics?.[LOSS];
    if (data.phase === TRAIN && Number.isFinite(loss)) {
      let curve = client.curves.get(data.epoch);
      if (!curve) client.curves.set(data.epoch, (curve = { x: [], y: [] }));
      curve.x.push(data.batch);
      curve.y.push(loss);
    }
    this.#touch(id);
  }

  /** The round `round` ended (Infinity: the run did): its rows go. */
  end(round) {
    if (!(round >= this.ended)) return;
    this.ended = round;
    if (this.round !== null && this.round <= round) this.#reset(null);
  }

  /** The client ids changed since the last call (and whether the rows must go first). */
  take() {
    const taken = { cleared: this.cleared, ids: this.dirty };
    this.dirty = new Set();
    this.cleared = false;
    this.dirtySince = undefined;
    return taken;
  }

  /**
   * Each shown client's straggler note ("" when none) at `nowMs` (the page's clock):
   * projected finish beyond STRAGGLER_FACTOR x the others' median, or a long silence.
   */
  stragglers(nowMs) {
    const notes = new Map();
    const byPhase = new Map();
    for (const client of this.clients.values()) {
      notes.set(client.id, "");
      if (!byPhase.has(client.phase)) byPhase.set(client.phase, []);
      byPhase.get(client.phase).push(client);
    }
    for (const clients of byPhase.values()) {
      const start = Math.min(...clients.map((c) => c.phaseStart.ms));
      const projected = new Map();
      for (const client of clients) {
        const seen = client.sentMs - client.phaseStart.ms;
        const done = client.fraction - client.phaseStart.fraction;
        if (client.fraction >= 1) projected.set(client, client.sentMs - start);
        else if (seen >= MIN_PROJECTION_MS && done > 0) {
          const remaining = ((1 - client.fraction) * seen) / done;
          projected.set(client, client.sentMs + remaining - start);
        }
      }
      for (const client of clients) {
        if (client.fraction >= 1) continue;
        const usual = client.intervalMs ?? 0;
        const silent = nowMs - client.receivedMs;
        if (silent > Math.max(SILENT_FACTOR * usual, SILENT_FLOOR_MS)) {
          notes.set(client.id, `straggler: silent ${formatDuration(silent)}`);
          continue;
        }
        const mine = projected.get(client);
        const others = [...projected].filter(([other]) => other !== client).map(([, d]) => d);
        if (mine === undefined || !others.length) continue;
        const typical = median(others);
        if (typical > 0 && mine > STRAGGLER_FACTOR * typical) {
          const ratio = (mine / typical).toFixed(1);
          notes.set(client.id, `straggler: projected ${ratio}× the median finish`);
        }
      }
    }
    return notes;
  }

  #reset(round) {
    this.round = round;
    this.clients = new Map();
    this.dirty = new Set();
    this.cleared = true;
    this.dirtySince ??= performance.now();
  }

  #touch(id) {
    this.dirty.add(id);
    this.dirtySince ??= performance.now();
  }
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

const COLUMNS = ["client", "progress", "phase", "epoch", `running ${LOSS}`, "examples/s", "last report", "note", ""];

/** The "Round in progress" panel: a FrameLoop painter. */
export class ProgressView {
  #model = null;
  #rows = new Map(); // client id -> the row's elements and the texts they show
  #tickSince; // the "last report" times and silences need a look
  #openCurves = new Set(); // client ids whose curves are open
  #curvesSince = new Map(); // open client id -> since when its chart waits

  constructor(section, onChange) {
    this.section = section;
    this.onChange = onChange;
    this.title = section.querySelector("#round-progress-title");
    this.body = section.querySelector("#round-progress-rows");
    const head = section.querySelector("#round-progress-head");
    head.replaceChildren(...COLUMNS.map((name) => cell("th", name)));
    this.body.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-curves]");
      if (button) this.#toggle(button.dataset.curves);
    });
  }

  /** Show another run's progress (null: none). */
  show(model) {
    this.#model = model;
    this.#clear();
    if (model) model.progress.dirtySince ??= performance.now();
    this.onChange();
  }

  /** Once a second: the times since each report move on. */
  tick() {
    if (!this.#rows.size) return;
    this.#tickSince ??= performance.now();
    this.onChange();
  }

  /** Painter: since when the oldest part waits. */
  pending() {
    const progress = this.#model?.progress;
    const waiting = [progress?.dirtySince, this.#tickSince, ...this.#curvesSince.values()];
    const since = waiting.filter((value) => value !== undefined);
    return since.length ? Math.min(...since) : undefined;
  }

  /** Painter: the rows (every change at once, in place), else one open chart. */
  step() {
    const progress = this.#model?.progress;
    if (!progress) {
      this.#tickSince = undefined;
      this.#curvesSince.clear();
      return;
    }
    const rowsWait = progress.dirtySince ?? this.#tickSince;
    const [chartId, chartSince] = [...this.#curvesSince].sort((a, b) => a[1] - b[1])[0] ?? [];
    if (rowsWait !== undefined && (chartSince === undefined || rowsWait <= chartSince)) {
      this.#updateRows(progress);
    } else if (chartId !== undefined) {
      this.#curvesSince.delete(chartId);
      this.#drawCurves(chartId);
    }
  }

  #updateRows(progress) {
    this.#tickSince = undefined;
    const { cleared, ids } = progress.take();
    if (cleared) this.#clear();
    for (const id of ids) {
      const client = progress.clients.get(id);
      if (!client) continue;
      const row = this.#rows.get(id) ?? this.#addRow(id);
      const data = client.data;
      set(row, "phase", roundPhaseLabel(data.phase));
      set(row, "epoch", `${data.epoch}/${data.num_epochs} · batch ${data.batch}/${data.num_batches}`);
      set(row, "lastLoss", client.loss === undefined ? "—" : formatNumber(client.loss));
      const rate = data.examples_per_second;
      set(row, "rate", Number.isFinite(rate) ? formatNumber(rate) : "—");
      if (row.bar.value !== client.fraction) {
        row.bar.value = client.fraction;
        set(row, "percent", `${Math.round(100 * client.fraction)} %`);
      }
      if (this.#openCurves.has(id) && !this.#curvesSince.has(id)) {
        this.#curvesSince.set(id, performance.now());
      }
    }
    const now = Date.now();
    const notes = progress.stragglers(now);
    for (const [id, row] of this.#rows) {
      const client = progress.clients.get(id);
      if (!client) continue;
      set(row, "since", `${formatDuration(now - client.receivedMs)} ago`);
      const note = notes.get(id) ?? "";
      set(row, "note", note);
      const flag = note ? "straggler" : "";
      if (row.tr.className !== flag) row.tr.className = flag;
    }
    const shown = this.#rows.size > 0;
    if (this.section.hidden === shown) this.section.hidden = !shown;
    const title = shown ? `Round ${progress.round} in progress · ${this.#rows.size} clients` : "";
    if (this.title.textContent !== title) this.title.textContent = title;
    if (this.#curvesSince.size) this.onChange();
  }

  #addRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.client = id;
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = 0;
    const percent = document.createElement("span");
    percent.className = "hint";
    const progressCell = cell("td", "");
    progressCell.className = "bar";
    progressCell.append(bar, percent);
    const texts = {};
    const cells = { percent };
    const named = (name) => (cells[name] = cell("td", ""));
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.curves = id;
    button.textContent = "curves";
    button.title = "This client's running loss over the batches of each local epoch";
    const buttonCell = cell("td", "");
    buttonCell.append(button);
    tr.append(
      cell("td", id),
      progressCell,
      named("phase"),
      named("epoch"),
      named("lastLoss"),
      named("rate"),
      named("since"),
      named("note"),
      buttonCell,
    );
    const chartRow = document.createElement("tr");
    chartRow.className = "curves";
    chartRow.hidden = true;
    const chartCell = cell("td", "");
    chartCell.colSpan = COLUMNS.length;
    const chart = document.createElement("div");
    chart.className = "client-curves";
    chart.dataset.client = id;
    chartCell.append(chart);
    chartRow.append(chartCell);
    const row = { tr, bar, cells, texts, chartRow, chart, button };
    // In client order: before the first row whose id sorts after this one.
    const after = [...this.#rows.keys()].sort(naturalCompare).find((other) => naturalCompare(other, id) > 0);
    const before = after === undefined ? null : this.#rows.get(after).tr;
    this.body.insertBefore(tr, before);
    this.body.insertBefore(chartRow, before);
    this.#rows.set(id, row);
    return row;
  }

  #toggle(id) {
    const row = this.#rows.get(id);
    if (!row) return;
    if (this.#openCurves.has(id)) {
      this.#openCurves.delete(id);
      this.#curvesSince.delete(id);
      row.chartRow.hidden = true;
      row.button.setAttribute("aria-expanded", "false");
      plotly().purge(row.chart);
      return;
    }
    this.#openCurves.add(id);
    row.chartRow.hidden = false;
    row.button.setAttribute("aria-expanded", "true");
    this.#curvesSince.set(id, performance.now());
    this.onChange();
  }

  #drawCurves(id) {
    const row = this.#rows.get(id);
    const client = this.#model?.progress.clients.get(id);
    if (!row || !client || !this.#openCurves.has(id)) return;
    const traces = [...client.curves].map(([epoch, curve]) => ({
      type: "scatter",
      mode: "lines+markers",
      name: `epoch ${epoch}`,
      x: curve.x,
      y: curve.y,
      marker: { size: 4 },
    }));
    const layout = baseLayout({
      height: 200,
      showlegend: true,
      hovermode: "closest",
      title: { text: `client ${id}: running ${LOSS} per local epoch`, font: { size: 12 } },
      xaxis: { title: { text: "batch" } },
      margin: { l: 48, r: 12, t: 30, b: 36 },
    });
    plotly().react(row.chart, traces, layout, { ...PLOT_CONFIG, responsive: false });
  }

  #clear() {
    for (const row of this.#rows.values()) {
      if (this.#openCurves.has(row.chart.dataset.client)) plotly().purge(row.chart);
    }
    this.#rows.clear();
    this.#openCurves.clear();
    this.#curvesSince.clear();
    this.body.replaceChildren();
    this.section.hidden = true;
    this.title.textContent = "";
  }
}

function cell(tag, text) {
  const element = document.createElement(tag);
  element.textContent = text;
  return element;
}

/** Set a row's cell text only when it changed (an unchanged text costs no layout). */
function set(row, name, text) {
  if (row.texts[name] === text) return;
  row.texts[name] = text;
  row.cells[name].textContent = text;
}
