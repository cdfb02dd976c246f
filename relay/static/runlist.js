// The runs the relay holds, as /api/runs summarises them, kept current without asking again:
// from the relay's run_summary frames where it sends them, and from the runs' own messages
// the page receives (a new run, its mode, its end), which an older relay leaves as the only
// source.

import { DEFAULT_RUN, FINAL_STATUSES, MODE, STATUS } from "./protocol.js";

export class RunList {
  #runs = new Map(); // run_id -> summary (an /api/runs entry)

  /** Replace the list with /api/runs' `runs`. */
  replace(runs) {
    this.#runs = new Map(runs.map((run) => [run.run_id, run]));
  }

  /** Take one run's summary (a run_summary frame's data). */
  upsert(summary) {
    this.#runs.set(summary.run_id, summary);
  }

  /**
   * Note a message of some run; returns "new" for a run the list did not have, "changed" when
   * what the run picker shows of it changed (mode, status), else null.
   */
  note(message) {
    const runId = message.run_id ?? DEFAULT_RUN;
    const data = message.data ?? {};
    let run = this.#runs.get(runId);
    const isNew = !run;
    if (isNew) {
      run = {
        run_id: runId,
        mode: null,
        status: STATUS.running,
        first_timestamp: message.timestamp,
        last_timestamp: message.timestamp,
        message_count: 0,
        last_seq: 0,
      };
      this.#runs.set(runId, run);
    }
    const before = `${run.mode}|${run.status}`;
    run.message_count += 1;
    run.last_timestamp = message.timestamp;
    if (Number.isInteger(message.seq)) run.last_seq = Math.max(run.last_seq, message.seq);
    if (message.type === "training_mode") {
      run.mode = data.is_federated ? MODE.federated : MODE.centralized;
    } else if (message.type === "training_end") {
      run.status = FINAL_STATUSES.has(data.status) ? data.status : STATUS.completed;
    } else if (message.type === "error" && run.status === STATUS.running) {
      run.status = STATUS.failed;
    }
    if (isNew) return "new";
    return before === `${run.mode}|${run.status}` ? null : "changed";
  }

  /** Whether the list has this run. */
  has(runId) {
    return this.#runs.has(runId);
  }

  /** One run's summary, or undefined. */
  get(runId) {
    return this.#runs.get(runId);
  }

  /** Every run, newest first by start time ("most recently active" would flip between parallel runs). */
  sorted() {
    return [...this.#runs.values()].sort((a, b) =>
      String(b.first_timestamp).localeCompare(String(a.first_timestamp)),
    );
  }
}
