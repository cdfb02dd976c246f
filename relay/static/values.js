// Metric values as they arrive on the wire: numbers, the protocol's non-finite strings
// ("NaN", "Infinity", "-Infinity"), null, or (from producers that send them) something else
// such as a list or a string, which is shown as it is but never drawn.

import { NON_FINITE } from "./protocol.js";

/** Whether a wire value is a scalar metric: a number, a non-finite string or null. */
export function isScalar(value) {
  return (
    value === null ||
    value === undefined ||
    typeof value === "number" ||
    (typeof value === "string" && NON_FINITE.has(value))
  );
}

/** A scalar wire value as a number ("NaN"/"Infinity" via Number()); null stays null. */
export function toNumber(value) {
  return value === null || value === undefined ? null : Number(value);
}

/** A wire value ready to plot: finite numbers only, anything else a gap (null). */
export function plottable(value) {
  if (!isScalar(value)) return null;
  const number = toNumber(value);
  return Number.isFinite(number) ? number : null;
}

// One collator for every comparison: localeCompare with options builds one per call.
const NATURAL = new Intl.Collator(undefined, { numeric: true });

/** Compare ids so that "2" sorts before "10". */
export function naturalCompare(a, b) {
  return NATURAL.compare(String(a), String(b));
}
