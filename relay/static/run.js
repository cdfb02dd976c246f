// The state of one run, rebuilt from its messages applied in seq order.
//
// The model only records; it never touches the page. Each change is also queued in
// `changes`, which the renderer drains once per animation frame (see `takeChanges`).

import {
  DEFAULT_EVAL_SOURCE,
  DEFAULT_ROUND_PHASE,
  EPOCH_PHASES,
  EVAL_SOURCES,
  FINAL_STATUSES,
  METRICS,
  MODE,
  ROUND_PHASES,
  STATUS,
} from "./protocol.js";

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

/** A wire value as a number: "NaN"/"Infinity"/"-Infinity" via Number(); null stays null. */
export function toNumber(value) {
  return value === null || value === undefined ? null : Number(value);
}

/** A wire value ready to plot: finite numbers only, anything else a gap (null). */
export function plottable(value) {
  const number = toNumber(value);
  return Number.isFinite(number) ? number : null;
}

/** Compare ids so that "2" sorts before "10". */
export function naturalCompare(a, b) {
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

/** One line of a chart: x sorted ascending, one y per x. */
class Series {
  xs = [];
  ys = [];

  /** Set y at x; returns "append" (new last x), "same" (no change) or "rewrite". */
  set(x, y) {
    const last = this.xs.length - 1;
    if (last < 0 || x > this.xs[last]) {
      this.xs.push(x);
      this.ys.push(y);
      return "append";
    }
    const at = this.xs.findIndex((value) => value >= x);
    if (this.xs[at] === x) {
      if (this.ys[at] === y) return "same"; // round_end repeating round_metrics
      this.ys[at] = y;
    } else {
      this.xs.splice(at, 0, x);
      this.ys.splice(at, 0, y);
    }
    return "rewrite";
  }
}

/** Per-client metrics of a federated run: phase -> client -> round -> entry. */
class ClientRounds {
  byPhase = new Map();
  counts = new Map(); // phase -> Map(round -> clients that took part)
  metricNames = new Map(); // phase -> Set of metric names seen

  add(round, phase, clients) {
    const table = getOrCreate(this.byPhase, phase, () => new Map());
    const names = getOrCreate(this.metricNames, phase, () => new Set());
    for (const client of clients) {
      const id = String(client.client_id);
      getOrCreate(table, id, () => new Map()).set(round, {
        numExamples: client.num_examples,
        metrics: client.metrics ?? {},
        error: client.error ?? null, // a client whose reply failed
      });
      Object.keys(client.metrics ?? {}).forEach((name) => names.add(name));
    }
    this.setCount(round, phase, clients.length);
  }

  setCount(round, phase, count) {
    getOrCreate(this.counts, phase, () => new Map()).set(round, count);
  }

  get isEmpty() {
    return this.byPhase.size === 0 && this.counts.size === 0;
  }

  phases() {
    return [...this.byPhase.keys()].sort();
  }

  clientIds(phase) {
    return [...(this.byPhase.get(phase)?.keys() ?? [])].sort(naturalCompare);
  }

  rounds(phase) {
    const rounds = new Set();
    for (const perRound of this.byPhase.get(phase)?.values() ?? []) {
      perRound.forEach((_, round) => rounds.add(round));
    }
    return [...rounds].sort((a, b) => a - b);
  }

  entry(phase, clientId, round) {
    return this.byPhase.get(phase)?.get(clientId)?.get(round);
  }
}

function positiveOrNull(value) {
  return Number.isInteger(value) && value > 0 ? value : null;
}

function getOrCreate(map, key, create) {
  if (!map.has(key)) map.set(key, create());
  return map.get(key);
}

function emptyChanges() {
  return {
    points: new Map(), // metric -> series name -> {x: [], y: []} appended since last frame
    rewrite: new Set(), // metrics whose chart must be redrawn from scratch
    clients: false,
    finished: false,
  };
}

export class RunModel {
  constructor(runId) {
    this.runId = runId;
    this.messages = []; // every message applied, in seq order (what the downloads hold)
    this.lastSeq = 0;
    this.mode = null; // MODE.federated | MODE.centralized, from training_mode or inferred
    this.totalSteps = null; // rounds or epochs planned, when the run said so
    this.numClients = null;
    this.step = null; // latest round or epoch seen
    this.status = WAITING;
    this.startTime = null; // Date of the first message
    this.lastTime = null; // Date of the latest message
    this.stepTime = null; // Date the latest round or epoch was reported
    this.series = new Map(); // metric -> Map(series name -> Series)
    this.clients = new ClientRounds();
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

  /** Record one message of this run (already deduplicated and in seq order). */
  apply(message) {
    const data = message.data ?? {};
    this.messages.push(message);
    if (Number.isInteger(message.seq)) this.lastSeq = message.seq;
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
          this.clients.setCount(data.round, phase, data.num_clients);
          this.changes.clients = true;
        }
        break;
      }
      case "round_end": {
        this.#progress(MODE.federated, data.round, data.total_rounds, message.timestamp);
        this.#addMetrics(data.round, ROUND_PHASES.train, data.fit_metrics);
        // Without eval_source (the original format) the eval metrics are the clients'.
        const source = EVAL_SOURCES[data.eval_source] ?? EVAL_SOURCES[DEFAULT_EVAL_SOURCE];
        this.#addMetrics(data.round, source, data.eval_metrics);
        break;
      }
      case "client_metrics":
        this.#progress(MODE.federated, data.round, data.total_rounds, message.timestamp);
        this.clients.add(data.round, data.phase, data.clients ?? []);
        this.changes.clients = true;
        break;
      case "early_stopping":
        this.earlyStopping = data;
        if (!this.isFinished) this.status = STATUS.early_stopped;
        break;
      case "error":
        this.errors.push(data);
        if (!this.trainingEnd) this.status = STATUS.failed;
        break;
      case "training_end":
        this.trainingEnd = data;
        this.status = FINAL_STATUSES.has(data.status) ? data.status : STATUS.completed;
        this.changes.finished = true;
        break;
      default:
        break; // custom messages are kept for the downloads only
    }
  }

  /** The series of one metric chart, in a stable order (fit/train before eval/val). */
  seriesOf(metric) {
    const rank = (name) => SERIES_ORDER.indexOf(name) + 1 || SERIES_ORDER.length + 1;
    const series = this.series.get(metric) ?? new Map();
    return [...series.entries()].sort(([a], [b]) => rank(a) - rank(b));
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
    for (const metric of METRICS) {
      if (!(metric in metrics)) continue;
      const y = plottable(metrics[metric]);
      const perMetric = getOrCreate(this.series, metric, () => new Map());
      const series = getOrCreate(perMetric, seriesName, () => new Series());
      const change = series.set(step, y);
      if (change === "rewrite") this.changes.rewrite.add(metric);
      if (change !== "append") continue;
      const pending = getOrCreate(this.changes.points, metric, () => new Map());
      const points = getOrCreate(pending, seriesName, () => ({ x: [], y: [] }));
      points.x.push(step);
      points.y.push(y);
    }
  }
}
