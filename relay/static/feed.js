// One run's messages, complete and in seq order, from a link that can drop, duplicate and
// reorder them.
//
// What the relay has stored comes first, over HTTP (api/runs/{id}/metrics?since=<last seq
// held>): one response and one JSON.parse, where a WebSocket replay costs the browser a
// message event per message (seconds for a long run). Then the feed subscribes with `since`
// = the last seq it holds, so the relay sends what was stored meanwhile, then live messages.
// A relay that cannot answer over HTTP replays everything on the WebSocket instead.
//
// The stored messages come in two reads. The first holds all but the DEFERRED types, the
// clients' lists, which are 85 of the 87 MB of a 1,000-round x 100-client run and which no
// chart needs: the charts are drawn from it. The second fetches those lists afterwards, in
// pages small enough to parse between frames, for the per-client view and the downloads
// (`detailed` says when they are all there). A model that keeps no client data (a
// comparison) never fetches them.
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

const DEFERRED = "client_metrics"; // the types fetched after the first read (comma-separated)
const PAGE_BYTES = 4_000_000; // a page of them: tens of ms to parse, so no long task

export class RunFeed {
  #connection;
  #epoch;
  #waiting = new Map(); // seq -> message that arrived ahead of its turn
  #replaying = false; // catching up: the stored messages are on their way
  #since = 0; // the `since` of the subscribe being answered
  #attempt = 0; // the latest catch-up (a reconnect starts another)
  #fetching = null; // the HTTP fetch under way, which a newer catch-up waits for
  #deferred = []; // [since, until] seq ranges whose DEFERRED messages are still to fetch
  #detailing = null; // the fetch of the deferred messages under way
  #onDetails;

  /**
   * @param {import("./run.js").RunModel} model
   * @param {import("./connection.js").RelayConnection} connection
   * @param {() => Promise<string|null>} epoch  the relay database's epoch, as /api/runs said
   * @param {() => void} onDetails  called after each page of deferred messages is applied
   */
  constructor(model, connection, epoch, onDetails = () => {}) {
    this.model = model;
    this.#connection = connection;
    this.#epoch = epoch;
    this.#onDetails = onDetails;
  }

  get runId() {
    return this.model.runId;
  }

  /** Whether the feed is catching up (its run is drawn once it has). */
  get replaying() {
    return this.#replaying;
  }

  /** Whether the model holds every message up to its last seq, the deferred ones included. */
  get detailed() {
    return !this.#replaying && this.#deferred.length === 0;
  }

  /** Resolves once the deferred messages held back so far are in the model (or failed). */
  details() {
    if (this.#deferred.length) {
      this.#detailing ??= this.#fetchDeferred().finally(() => {
        this.#detailing = null;
      });
    }
    return this.#detailing ?? Promise.resolve();
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
    this.details(); // in the background: the charts are drawn meanwhile
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

  /**
   * The stored messages after the last seq held, over HTTP, the DEFERRED ones left for
   * later when the model keeps them (and dropped when it does not); on failure the replay
   * has them all.
   */
  async #fetchStored() {
    const since = this.model.lastSeq;
    let read;
    try {
      read = await this.#read(`since=${since}&exclude=${DEFERRED}`);
    } catch (error) {
      console.warn(`fl-stream: could not fetch ${this.model.runId} (${error.message})`);
      return;
    }
    if (!read) return; // 404: nothing stored yet (the subscribe replays the rest)
    // The read holds every message up to through_seq but the deferred ones: a live message
    // in that range that came ahead of it is in the read, or in the deferred fetch.
    const through = read.through_seq;
    for (const seq of this.#waiting.keys()) if (seq <= through) this.#waiting.delete(seq);
    read.messages.forEach((message) => this.model.apply(message));
    this.model.skipTo(through);
    if (this.model.keepClients && through > since) this.#deferred.push([since, through]);
    this.#applyInOrder();
  }

  /** The deferred messages of the ranges held back, a page at a time; a failure waits. */
  async #fetchDeferred() {
    while (this.#deferred.length) {
      const [since, until] = this.#deferred[0];
      let page;
      try {
        const query = `since=${since}&until=${until}&types=${DEFERRED}&max_bytes=${PAGE_BYTES}`;
        page = await this.#read(query);
      } catch (error) {
        // The next catch-up (the link opening again) tries again.
        console.warn(`fl-stream: could not fetch ${this.model.runId}'s clients (${error.message})`);
        return;
      }
      if (!page) return; // the run is gone (another database): the page shows it anew
      this.model.applyEarlier(page.messages);
      if (page.more) this.#deferred[0] = [page.through_seq, until];
      else this.#deferred.shift();
      this.#onDetails();
    }
  }

  /** One read of the run's stored messages (`query`: api/runs/{id}/metrics's); null: 404. */
  async #read(query) {
    const run = encodeURIComponent(this.model.runId);
    const response = await apiFetch(`api/runs/${run}/metrics?${query}`, { cache: "no-store" });
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response.json();
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
