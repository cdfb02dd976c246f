// The state of one run, rebuilt from its messages applied in seq order.
//
// The model only records; it never touches the page. What changed is queued in `changes`,
// which the renderer drains (see `takeChanges`). Metric names are discovered from the
// messages: every scalar metric gets its series; a value that is not a scalar (a list, a
// string) is kept in `details` instead of being drawn.

import { ClientRounds } from "./clientrounds.js";
import { compareMetrics } from "./metrics.js";
import {
  DEFAULT_EVAL_SOURCE,
  DEFAULT_ROUND_PHASE,
  EPOCH_PHASES,
  EVAL_SOURCES,
  FINAL_STATUSES,
  MODE,
  ROUND_PHASES,
  STATUS,
  roundPhaseLabel,
} from "./protocol.js";
import { RoundProgress } from "./progress.js";
import { Series } from "./series.js";
import { isScalar, plottable } from "./values.js";

// Series names on the metric charts come from the protocol: federated rounds plot fit/eval
// (round_metrics phases train/evaluate), centralized epochs plot train/val. A round_end's
// eval_metrics are drawn on the line of their eval_source: the clients' evaluation on the
// clients' eval line, the server's own (centralized) evaluation of the global model on a
// line of its own.
const SERIES_ORDER = [
  ...new Set([
    ROUND_PHASES.train,
    EPOCH_PHASES.train,
    ...Object.values(ROUND_PHASES),
    ...Object.values(EPOCH_PHASES),
    ...Object.values(EVAL_SOURCES),
  ]),
]; // fit/train first, then the evaluation lines
const WAITING = "waiting"; // the page's own state: no message of the run yet
const FINAL = "final"; // where the final metrics' non-scalar values are shown as coming from

function positiveOrNull(value) {
  return Number.isInteger(value) && value > 0 ? value : null;
}

/** Two arrays of messages in seq order, merged into one in seq order. */
function mergeBySeq(held, earlier) {
  const merged = [];
  let i = 0;
  for (const message of held) {
    while (i < earlier.length && earlier[i].seq < message.seq) merged.push(earlier[i++]);
    merged.push(message);
  }
  return merged.concat(earlier.slice(i));
}

function getOrCreate(map, key, create) {
  if (!map.has(key)) map.set(key, create());
  return map.get(key);
}

function emptyChanges() {
  return {
    metrics: new Set(), // metrics with new points
    rewrite: new Set(), // metrics whose chart must be redrawn from scratch
    clientPhases: new Set(), // phases with new client entries
    counts: false, // how many clients took part in a round changed
    finished: false,
    details: false,
  };
}

export class RunModel {
  #sortedNames = null; // metricNames(), until a metric appears

  /**
   * @param {string} runId
   * @param {object} options  keepClients (false: client_metrics are counted, never read,
   *   as a comparison needs), keepMessages (false: the messages are not kept for downloads)
   */
  constructor(runId, { keepClients = true, keepMessages = true } = {}) {
    this.runId = runId;
    this.keepClients = keepClients;
    this.keepMessages = keepMessages;
    this.messages = []; // messages in seq order (what the downloads hold)
    this.messageCount = 0;
    this.lastSeq = 0;
    this.endSeq = 0; // the seq of the latest round_end or training_end
    this.mode = null; // MODE.federated | MODE.centralized, from training_mode or inferred
    this.totalSteps = null; // rounds or epochs planned, when the run said so
    this.numClients = null;
    this.config = null; // training_mode's settings, when it sent them
    this.step = null; // latest round or epoch seen
    this.status = WAITING;
    this.startTime = null; // Date of the first message
    this.lastTime = null; // Date of the latest message
    this.stepTime = null; // Date the latest round or epoch was reported
    this.series = new Map(); // metric -> Map(series name -> Series)
    this.clients = new ClientRounds();
    this.progress = new RoundProgress(); // the clients' client_progress in the round under way
    this.details = new Map(); // where + metric -> the latest non-scalar value there
    this.earlyStopping = null;
    this.errors = [];
    this.trainingEnd = null;
    this.changes = emptyChanges();
  }

  get isFinished() {
    return FINAL_STATUSES.has(this.status);
  }

  get stepUnit() {
    return this.mode === MODE.centralized ? "epoch" : "round";
  }

  /** The changes since the last call, for the renderer; resets them. */
  takeChanges() {
    const changes = this.changes;
    this.changes = emptyChanges();
    return changes;
  }

  /** Every metric with a series, in page order. */
  metricNames() {
    this.#sortedNames ??= [...this.series.keys()].sort(compareMetrics);
    return this.#sortedNames;
  }

  /** The series of one metric chart, in a stable order (fit/train before eval/val). */
  seriesOf(metric) {
    const rank = (name) => SERIES_ORDER.indexOf(name) + 1 || SERIES_ORDER.length + 1;
    const series = this.series.get(metric) ?? new Map();
    return [...series.entries()].sort(([a], [b]) => rank(a) - rank(b));
  }

  /** Record one message of this run (deduplicated, in seq order). */
  apply(message) {
    this.messageCount += 1;
    if (Number.isInteger(message.seq)) this.lastSeq = message.seq;
    if (this.keepMessages) this.messages.push(message);
    this.#record(message);
  }

  /** Every message up to `seq` is recorded, or will come through applyEarlier. */
  skipTo(seq) {
    if (seq > this.lastSeq) this.lastSeq = seq;
  }

  /**
   * Record messages held back when their seqs were skipped (in seq order, each below
   * lastSeq): kept in seq order among the others, for the downloads.
   */
  applyEarlier(messages) {
    if (!messages.length) return;
    this.messageCount += messages.length;
    messages.forEach((message) => this.#record(message));
    if (this.keepMessages) this.messages = mergeBySeq(this.messages, messages);
  }

  #record(message) {
    const data = message.data ?? {};
    this.#noteTime(message.timestamp);
    switch (message.type) {
      case "training_mode":
        this.mode = data.is_federated ? MODE.federated : MODE.centralized;
        // A centralized run states its planned epochs in num_epochs (num_rounds 0); a client
        // of the original format may have put them in num_rounds. 0 or absent: unknown.
        this.totalSteps = positiveOrNull(
          data.is_federated ? data.num_rounds : (data.num_epochs ?? data.num_rounds),
        );
        this.numClients = positiveOrNull(data.num_clients);
        this.config = data.config ?? null;
        this.#markRunning();
        break;
      case "epoch_end":
        this.#progress(MODE.centralized, data.epoch, null, message.timestamp);
        this.#addMetrics(data.epoch, EPOCH_PHASES[data.phase] ?? data.phase, data.metrics);
        break;
      case "round_metrics": {
        this.#progress(MODE.federated, data.round, data.total_rounds, message.timestamp);
        // round_metrics without a phase (the original format) are the evaluation averages.
        const phase = data.phase ?? DEFAULT_ROUND_PHASE;
        this.#addMetrics(data.round, ROUND_PHASES[phase] ?? phase, data.metrics);
        if (Number.isInteger(data.num_clients)) {
          if (this.clients.setCount(data.round, phase, data.num_clients)) this.changes.counts = true;
        }
        break;
      }
      case "client_progress":
        // Sent by the clients while they train: shown in "Round in progress" only, never a
        // metric point nor a round of the run's progress.
        if (this.keepClients) this.progress.apply(data, Date.parse(message.timestamp), Date.now());
        break;
      case "round_end": {
        this.#noteEnd(message.seq);
        this.progress.end(data.round);
        this.#progress(MODE.federated, data.round, data.total_rounds, message.timestamp);
        this.#addMetrics(data.round, ROUND_PHASES.train, data.fit_metrics);
        // Without eval_source (the original format) the eval metrics are the clients'.
        const source = EVAL_SOURCES[data.eval_source] ?? EVAL_SOURCES[DEFAULT_EVAL_SOURCE];
        this.#addMetrics(data.round, source, data.eval_metrics);
        break;
      }
      case "client_metrics": {
        this.#progress(MODE.federated, data.round, data.total_rounds, message.timestamp);
        if (!this.keepClients) break;
        const clients = data.clients ?? [];
        for (const { client, name, value } of this.clients.add(data.round, data.phase, clients)) {
          this.#detail(`client ${client} · ${roundPhaseLabel(data.phase)}`, name, data.round, value);
        }
        this.changes.clientPhases.add(data.phase);
        if (this.clients.setCount(data.round, data.phase, clients.length)) this.changes.counts = true;
        break;
      }
      case "early_stopping":
        this.earlyStopping = data;
        if (!this.isFinished) this.status = STATUS.early_stopped;
        break;
      case "error":
        this.errors.push(data);
        if (!this.trainingEnd) this.status = STATUS.failed;
        break;
      case "training_end":
        this.#noteEnd(message.seq);
        this.trainingEnd = data;
        this.status = FINAL_STATUSES.has(data.status) ? data.status : STATUS.completed;
        for (const [name, value] of Object.entries(data.final_metrics ?? {})) {
          if (!isScalar(value)) this.#detail(FINAL, name, null, value);
        }
        this.progress.end(Infinity);
        this.changes.finished = true;
        break;
      default:
        break; // custom messages are kept for the downloads only
    }
  }

  #noteEnd(seq) {
    if (Number.isInteger(seq) && seq > this.endSeq) this.endSeq = seq;
  }

  #noteTime(timestamp) {
    const time = new Date(timestamp);
    if (Number.isNaN(time.getTime())) return;
    if (!this.startTime || time < this.startTime) this.startTime = time;
    if (!this.lastTime || time > this.lastTime) this.lastTime = time;
  }

  #markRunning() {
    if (this.status === WAITING) this.status = STATUS.running;
  }

  #progress(mode, step, total, timestamp) {
    this.mode ??= mode; // a run that never sent training_mode
    this.#markRunning();
    if (Number.isInteger(total) && total > 0) this.totalSteps = total;
    if (Number.isInteger(step) && (this.step === null || step > this.step)) {
      this.step = step;
      this.stepTime = new Date(timestamp);
    }
  }

  #addMetrics(step, seriesName, metrics) {
    if (!metrics || !Number.isFinite(step)) return;
    for (const [metric, value] of Object.entries(metrics)) {
      if (!isScalar(value)) {
        this.#detail(seriesName, metric, step, value);
        continue;
      }
      if (!this.series.has(metric)) {
        this.series.set(metric, new Map());
        this.#sortedNames = null;
      }
      const series = getOrCreate(this.series.get(metric), seriesName, () => new Series());
      const change = series.set(step, plottable(value));
      if (change === "rewrite") this.changes.rewrite.add(metric);
      if (change === "append") this.changes.metrics.add(metric);
    }
  }

  #detail(where, metric, step, value) {
    const key = `${where}\u0000${metric}`;
    // The latest value: one held back and recorded later is older than what is there.
    if ((this.details.get(key)?.step ?? -Infinity) > (step ?? Infinity)) return;
    this.details.set(key, { where, metric, step, value });
    this.changes.details = true;
  }
}
