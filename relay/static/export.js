// Downloads of the run the page holds: JSON (the messages as received) and CSV (one row per
// metrics record), built in the browser so they work offline and match what is drawn.

import { compareMetrics } from "./metrics.js";
import { NON_FINITE, ROUND_PHASES } from "./protocol.js";

const FIXED_COLUMNS = [
  "seq",
  "timestamp",
  "type",
  "round",
  "epoch",
  "phase",
  "client_id",
  "num_examples",
];

/** The run's messages, in seq order, as pretty-printed JSON. */
export function runToJson(model) {
  return JSON.stringify(model.messages, null, 2);
}

/**
 * The run as CSV: one row per metrics record (an epoch phase, a round phase, one client in a
 * round, the final metrics) with one column per metric; other messages (training_mode,
 * early_stopping, error, ...) get a row whose `details` column holds their data as JSON.
 */
export function runToCsv(model) {
  // Client progress (many per client and round) is no metrics record: the JSON keeps it.
  const records = model.messages.filter((m) => m.type !== "client_progress").flatMap(recordsOf);
  const metricNames = new Set();
  records.forEach((record) => Object.keys(record.metrics).forEach((name) => metricNames.add(name)));
  const metricColumns = [...metricNames].sort(compareMetrics); // as the charts are ordered
  const header = [...FIXED_COLUMNS, ...metricColumns, "details"];
  const lines = [header.map(csvCell).join(",")];
  for (const record of records) {
    const cells = [
      ...FIXED_COLUMNS.map((column) => record.fields[column]),
      ...metricColumns.map((name) => record.metrics[name]),
      record.details,
    ];
    lines.push(cells.map(csvCell).join(","));
  }
  return lines.join("\r\n") + "\r\n";
}

/** Save `text` as a file named `filename` through a temporary Blob URL. */
export function download(filename, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** A file name made of the run id's safe characters. */
export function fileStem(runId) {
  return `run-${String(runId).replace(/[^\w.-]+/g, "_")}`;
}

function recordsOf(message) {
  const data = message.data ?? {};
  const base = { seq: message.seq, timestamp: message.timestamp, type: message.type };
  const record = (fields, metrics, details = "") => ({
    fields: { ...base, ...fields },
    metrics: metrics ?? {},
    details,
  });
  switch (message.type) {
    case "epoch_end":
      return [record({ epoch: data.epoch, phase: data.phase }, data.metrics)];
    case "round_metrics":
      return [record({ round: data.round, phase: data.phase }, data.metrics)];
    case "round_end":
      return [
        record({ round: data.round, phase: ROUND_PHASES.train }, data.fit_metrics),
        record({ round: data.round, phase: ROUND_PHASES.evaluate }, data.eval_metrics),
      ];
    case "client_metrics":
      return (data.clients ?? []).map((client) =>
        record(
          {
            round: data.round,
            phase: data.phase,
            client_id: client.client_id,
            num_examples: client.num_examples,
          },
          client.metrics,
          client.error ? JSON.stringify({ error: client.error }) : "",
        ),
      );
    case "training_end": {
      const { final_metrics: finalMetrics, ...rest } = data;
      const fields = { round: data.best_round, epoch: data.best_epoch, phase: "final" };
      return [record(fields, finalMetrics, JSON.stringify(rest))];
    }
    default:
      return [record({}, {}, JSON.stringify(data))];
  }
}

// A text cell that a spreadsheet would read as a formula (OWASP's CSV injection list).
const FORMULA_START = /^[=+\-@\t\r]/;

/**
 * One CSV cell. Text that starts like a formula (`=`, `+`, `-`, `@`, tab, carriage return:
 * a metric name or client id from a hostile publisher) gets a leading `'` and is quoted, as
 * OWASP recommends; numbers (-0.5) and the protocol's non-finite strings ("-Infinity") are
 * values and stay as they are.
 */
export function csvCell(value) {
  if (value === null || value === undefined) return "";
  // A list-valued metric (or any object) as JSON, not as JavaScript's "1,2,3".
  let text = typeof value === "object" ? JSON.stringify(value) : String(value);
  const formula = typeof value === "string" && !NON_FINITE.has(value) && FORMULA_START.test(text);
  if (formula) text = `'${text}`;
  return formula || /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}
