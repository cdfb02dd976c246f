// The wire protocol, as the relay describes it: `GET api/protocol`, the JSON document that
// fl_stream/monitor/protocol.py builds (describe()). The page declares none of it itself:
// metric names, run statuses and their labels, phase and series names and the default run
// all come from here.
//
// The document is fetched once, by this module's top-level await: every module that imports
// it runs only after it has arrived, so nothing is drawn before the page knows the protocol.

import { apiFetch } from "./auth.js";

async function load() {
  const response = await apiFetch("api/protocol", { cache: "no-store" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

let described;
try {
  described = await load();
} catch (error) {
  const problem = `could not load the protocol from the relay (${error.message})`;
  const note = document.getElementById("empty-state");
  if (note) note.textContent = `The dashboard ${problem}; reload the page to try again.`;
  throw new Error(`fl-stream: ${problem}`);
}

function deepFreeze(value) {
  if (value && typeof value === "object") {
    Object.values(value).forEach(deepFreeze);
    Object.freeze(value);
  }
  return value;
}

/** The document exactly as the relay served it (frozen). */
export const PROTOCOL = deepFreeze(described);

/** The original design's metrics, in the order the page shows them. */
export const METRICS = PROTOCOL.metric_names;
/** Metrics whose values are fractions in [0, 1]. */
export const FRACTION_METRICS = new Set(PROTOCOL.fraction_metrics);
/** The strings that stand for non-finite numbers ("NaN", "Infinity", "-Infinity"). */
export const NON_FINITE = new Set(PROTOCOL.non_finite);
/** Run statuses by name (STATUS.running, STATUS.failed, ...). */
export const STATUS = PROTOCOL.statuses;
/** The statuses of a finished run. */
export const FINAL_STATUSES = new Set(PROTOCOL.run_statuses);
/** Run modes by name (MODE.federated, MODE.centralized). */
export const MODE = PROTOCOL.modes;
/** The run of messages that carry no run_id. */
export const DEFAULT_RUN = PROTOCOL.default_run;
/** Phases of a centralized epoch -> the name of their chart line. */
export const EPOCH_PHASES = PROTOCOL.epoch_phases;
/** Phases of a federated round -> their display names. */
export const ROUND_PHASES = PROTOCOL.round_phases;
/** The phase of a round_metrics that states none (the original format). */
export const DEFAULT_ROUND_PHASE = PROTOCOL.default_round_phase;
/** Who computed a round_end's eval_metrics -> the name of their chart line. */
export const EVAL_SOURCES = PROTOCOL.eval_sources;
/** The eval_source of a round_end that states none (the original format). */
export const DEFAULT_EVAL_SOURCE = PROTOCOL.default_eval_source;

/**
 * Whether this relay pushes a `run_summary` control frame whenever a run appears or changes
 * status (it says so by listing the type in its protocol). Without it the page keeps its run
 * list current from the runs' own messages.
 */
export const RELAY_PUSHES_RUN_SUMMARIES = Object.hasOwn(PROTOCOL.control_types ?? {}, "run_summary");

/** How a status reads on the page (its label); an unknown one reads as itself. */
export function statusLabel(status) {
  return PROTOCOL.status_labels[status] ?? status;
}

/** How a federated round's phase reads on the page (its display name). */
export function roundPhaseLabel(phase) {
  return ROUND_PHASES[phase] ?? phase;
}

const endsWithAny = (name, suffixes) => {
  const lowered = String(name).toLowerCase();
  return suffixes.some((suffix) => lowered.endsWith(suffix));
};

/** Whether a metric is a duration (its name ends as the protocol's durations do). */
export function isDuration(name) {
  return endsWithAny(name, PROTOCOL.duration_suffixes);
}

/** Whether smaller values of a metric are better: a loss or a duration. */
export function lowerIsBetter(name) {
  return endsWithAny(name, [...PROTOCOL.loss_suffixes, ...PROTOCOL.duration_suffixes]);
}
