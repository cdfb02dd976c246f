// Text for numbers, durations and times as the page shows them.

import { isScalar, toNumber } from "./values.js";

// A non-scalar value (a list, a string) is shown as JSON, cut to this many characters.
const VALUE_CHARS = 120;

/**
 * A metric value for a table cell: 4 significant decimals, "NaN"/"∞" spelled out; a value
 * that is not a scalar (a list, a string) as shortened JSON.
 */
export function formatNumber(value) {
  if (value === null || value === undefined) return "—";
  if (!isScalar(value)) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return text.length > VALUE_CHARS ? `${text.slice(0, VALUE_CHARS - 1)}…` : text;
  }
  const number = toNumber(value);
  if (Number.isNaN(number)) return "NaN";
  if (!Number.isFinite(number)) return number > 0 ? "∞" : "−∞";
  if (Number.isInteger(number)) return String(number);
  return Math.abs(number) >= 1000 ? number.toFixed(1) : number.toFixed(4);
}

/** A duration in milliseconds as "1h 02m", "3m 05s" or "12s". */
export function formatDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return "—";
  const seconds = Math.round(ms / 1000);
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  const pad = (n) => String(n).padStart(2, "0");
  if (h) return `${h}h ${pad(m)}m`;
  if (m) return `${m}m ${pad(s)}s`;
  return `${s}s`;
}

// One formatter for every time: toLocaleString with options builds one per call.
const LOCAL_TIME = new Intl.DateTimeFormat(undefined, {
  dateStyle: "short",
  timeStyle: "medium",
  hour12: false,
});

/** A timestamp as local date and time, to the second. */
export function formatTime(timestamp) {
  const time = new Date(timestamp);
  return Number.isNaN(time.getTime()) ? "" : LOCAL_TIME.format(time);
}
