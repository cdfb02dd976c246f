// One run's messages, complete and in seq order, from a link that can drop, duplicate and
// reorder them.
//
// What the relay has stored comes first, over HTTP (api/runs/{id}/metrics?since=<last seq
// held>): one response and one JSON.parse, where a WebSocket replay costs the browser a
// message event per message (seconds for a long run). Then the feed subscribes with `since`
// = the last seq it holds, so the relay sends what was stored meanwhile, then live messages.
// A relay that cannot answer over HTTP replays everything on the WebSocket instead.
//
// Messages are applied strictly in seq order: a seq already held is dropped, a message ahead
// of a missing one waits until the replay fills the gap, and a hole in the live stream makes
// the feed subscribe again.
//
// Seqs number the messages of one relay database, which the relay names by an epoch: the
// feed sends back the epoch it knows, and a relay now on another database says so
// (`recovered: false`), after which what the model holds is not this run any more.

import { apiFetch } from "./auth.js";
import { control } from "./connection.js";

export class RunFeed {
  #connection;
  #epoch;
  #waiting = new Map(); // seq -> message that arrived ahead of its turn
  #replaying = false; // catching up: the stored messages are on their way
  #since = 0; // the `since` of the subscribe being answered
  #attempt = 0; // the latest catch-up (a reconnect starts another)
  #fetching = null; // the HTTP fetch under way, which a newer catch-up waits for

  /**
   * @param {import("./run.js").RunModel} model
   * @param {import("./connection.js").RelayConnection} connection
   * @param {() => Promise<string|null>} epoch  the relay database's epoch, as /api/runs said
   */
  constructor(model, connection, epoch) {
    this.model = model;
    this.#connection = connection;
    this.#epoch = epoch;
  }

  get runId() {
    return this.model.runId;
  }

  /** Whether the feed is catching up (its run is drawn once it has). */
  get replaying() {
    return this.#replaying;
  }

  /**
   * Catch up with everything after the last seq held, then go live; again after every
   * reconnect. The HTTP part starts at once; the subscribe goes out on an open link (the
   * page calls this again when the link opens).
   */
  async subscribe() {
    this.#replaying = true;
    const attempt = ++this.#attempt;
    this.#fetching ??= this.#fetchStored().finally(() => {
      this.#fetching = null;
    });
    await this.#fetching;
    const epoch = await this.#epoch();
    if (attempt !== this.#attempt) return; // a newer catch-up (the link opened again) goes on
    this.#since = this.model.lastSeq;
    const data = { run_id: this.model.runId, since: this.#since, epoch };
    this.#connection.send(control("subscribe", data));
  }

  /** Stop receiving this run. */
  unsubscribe() {
    this.#attempt += 1; // a catch-up under way stops before it subscribes
    this.#connection.send(control("unsubscribe", { run_id: this.model.runId }));
  }

  /** Take a message of this run, in whatever order it came. */
  receive(message) {
    const model = this.model;
    const seq = message.seq;
    if (!Number.isInteger(seq)) {
      model.apply(message); // a relay that does not number messages: nothing to order by
      return;
    }
    if (seq <= model.lastSeq || this.#waiting.has(seq)) return;
    this.#waiting.set(seq, message);
    this.#applyInOrder();
    // A hole in the live stream (e.g. the relay dropped us for a moment): fetch it.
    if (this.#waiting.size && !this.#replaying) this.subscribe();
  }

  /**
   * The relay's replay_end: everything stored has come. Returns false when the model holds
   * messages of another relay database (drop it and show the run anew), else true.
   */
  endReplay({ epoch, recovered } = {}) {
    this.#replaying = false;
    if (epoch) this.#epoch = async () => epoch;
    if (recovered === false && this.#since > 0) return false;
    this.#applyInOrder();
    // The relay has sent every stored message: a hole still open is one the run never had.
    const rest = [...this.#waiting.values()].sort((a, b) => a.seq - b.seq);
    this.#waiting.clear();
    rest.forEach((message) => this.model.apply(message));
    return true;
  }

  /** The stored messages after the last seq held, over HTTP; on failure the replay has them. */
  async #fetchStored() {
    const run = encodeURIComponent(this.model.runId);
    try {
      const response = await apiFetch(`api/runs/${run}/metrics?since=${this.model.lastSeq}`, {
        cache: "no-store",
      });
      if (!response.ok) return; // 404: nothing stored yet (the subscribe replays the rest)
      const { messages } = await response.json();
      messages.forEach((message) => this.receive(message));
    } catch (error) {
      console.warn(`fl-stream: could not fetch ${this.model.runId} (${error.message})`);
    }
  }

  #applyInOrder() {
    const model = this.model;
    let next;
    while ((next = this.#waiting.get(model.lastSeq + 1))) {
      this.#waiting.delete(next.seq);
      model.apply(next);
    }
  }
}
