// One run's messages, complete and in seq order, from a link that can drop, duplicate and
// reorder them.
//
// What the relay has stored comes first, over HTTP (api/runs/{id}/metrics?since=<last seq
// held>): one response and one JSON.parse, where a WebSocket replay costs the browser a
// message event per message (seconds for a long run). Then the feed subscribes with `since`
// = the last seq it holds, so the relay sends what was stored meanwhile, then live messages.
// A relay that cannot answer over HTTP replays everything on the WebSocket instead.
//
// The stored messages come in parts. The first read holds all but the clients' lists and
// progress reports: the lists are 85 of the 87 MB of a 1,000-round x 100-client run and no
// chart needs them; the reports are up to two a second per client, and only those of the
// round under way are shown. The charts are drawn from it. The reports after the latest
// round_end (the round under way) are read next, before going live, so that they come in
// order. The clients' lists follow once the charts are drawn (the page calls readHeldBack),
// in pages small enough to parse between frames, for the per-client view (`detailed` says
// when they are all there). The reports of ended rounds are read only for a download
// (`complete`). A model that keeps no client data (a comparison) reads neither.
//
// Seqs number the messages of one relay database, which the relay names by an epoch: the
// feed sends back the epoch it knows, and a relay now on another database says so
// (`recovered: false`), after which what the model holds is not this run any more.

import { apiFetch } from "./auth.js";
import { control } from "./connection.js";

const LISTS = "client_metrics"; // read after the charts are drawn, for the client view
const REPORTS = "client_progress"; // those of ended rounds are read only for a download
const PAGE_BYTES = 4_000_000; // a page of them: tens of ms to parse, so no long task
// A failed read of the clients' lists is tried again after 1 s, then 2 s, ... up to 30 s.
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30_000;

export class RunFeed {
  #connection;
  #epoch;
  #waiting = new Map(); // seq -> message that arrived ahead of its turn
  #replaying = false; // catching up: the stored messages are on their way
  #stored = false; // this catch-up's HTTP read is in the model: the replay brings only the rest
  #since = 0; // the `since` of the subscribe being answered
  #attempt = 0; // the latest catch-up (a reconnect starts another)
  #fetching = null; // the HTTP fetch under way, which a newer catch-up waits for
  #deferred = []; // {since, until, types, background} messages held back, still to read
  #reading = null; // the read of deferred messages under way
  #background = null; // the reading of the clients' lists under way
  #everything = null; // the reading of every held-back message (for a download) under way
  #retryAt = 0; // Date.now() before which a failed background read is not tried again
  #retryMs = RETRY_MIN_MS;
  #covered = 0; // seqs up to here come from the HTTP reads, never from the link
  #closed = false; // unsubscribed: reads under way stop
  #onHeldBack;

  /**
   * @param {import("./run.js").RunModel} model
   * @param {import("./connection.js").RelayConnection} connection
   * @param {() => Promise<string|null>} epoch  the relay database's epoch, as /api/runs said
   * @param {() => void} onHeldBack  called after each page of held-back messages is applied,
   *   and when a failed read of them may be tried again (the page calls readHeldBack)
   */
  constructor(model, connection, epoch, onHeldBack = () => {}) {
    this.model = model;
    this.#connection = connection;
    this.#epoch = epoch;
    this.#onHeldBack = onHeldBack;
  }

  get runId() {
    return this.model.runId;
  }

  /**
   * Whether the feed is catching up on what the relay stored (the run is drawn once it has):
   * until the HTTP read is in the model, or, without one, until the replay has ended.
   */
  get replaying() {
    return this.#replaying && !this.#stored;
  }

  /** Whether the model holds what the page shows: the clients' lists included. */
  get detailed() {
    return !this.replaying && !this.#deferred.some((range) => range.background);
  }

  /** Whether the model holds every message up to its last seq. */
  get complete() {
    return !this.replaying && this.#deferred.length === 0;
  }

  /**
   * Read the messages held back: the clients' lists, and with `all` the progress reports
   * of ended rounds too. Resolves once they are in the model, or a read failed: a failed
   * read of the lists is tried again after a backoff (onHeldBack asks the page to call
   * again); one for a download, at the next download.
   */
  readHeldBack({ all = false } = {}) {
    if (all) {
      this.#everything ??= this.#readAllHeldBack(true).finally(() => {
        this.#everything = null;
      });
      return this.#everything;
    }
    if (Date.now() < this.#retryAt) return Promise.resolve();
    this.#background ??= this.#readAllHeldBack(false)
      .then((read) => this.#retryLater(read))
      .finally(() => {
        this.#background = null;
      });
    return this.#background;
  }

  /** Read held-back ranges (only the background ones unless `all`); false: a read failed. */
  async #readAllHeldBack(all) {
    if (all) await this.#fetching; // a catch-up under way adds ranges
    while (!this.#closed && this.#deferred.some((range) => all || range.background)) {
      this.#reading ??= this.#readDeferred(all).finally(() => {
        this.#reading = null;
      });
      if (!(await this.#reading)) return false;
    }
    return true;
  }

  /** After a failed background read, ask the page to draw (and so read) again, later. */
  #retryLater(read) {
    if (read) {
      this.#retryMs = RETRY_MIN_MS;
      return;
    }
    this.#retryAt = Date.now() + this.#retryMs;
    setTimeout(() => this.#onHeldBack(), this.#retryMs);
    this.#retryMs = Math.min(2 * this.#retryMs, RETRY_MAX_MS);
  }

  /**
   * Catch up with everything after the last seq held, then go live; again after every
   * reconnect. The HTTP part starts at once; the subscribe goes out on an open link (the
   * page calls this again when the link opens).
   */
  async subscribe() {
    this.#replaying = true;
    this.#stored = false;
    const attempt = ++this.#attempt;
    this.#fetching ??= this.#fetchStored().finally(() => {
      this.#fetching = null;
    });
    const stored = await this.#fetching;
    const epoch = await this.#epoch();
    if (attempt !== this.#attempt) return; // a newer catch-up (the link opened again) goes on
    this.#stored = stored;
    this.#since = this.model.lastSeq;
    const data = { run_id: this.model.runId, since: this.#since, epoch };
    this.#connection.send(control("subscribe", data));
  }

  /** Stop receiving this run (for good: the page shows another). */
  unsubscribe() {
    this.#closed = true; // held-back reads stop after their page under way
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
    if (seq <= Math.max(model.lastSeq, this.#covered) || this.#waiting.has(seq)) return;
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
   * The stored messages after the last seq held, over HTTP: all but the held-back types,
   * then the progress reports of the round under way (none for a model that keeps no
   * client data). Returns whether it read them; when not, the replay has them all.
   */
  async #fetchStored() {
    const model = this.model;
    try {
      // Seqs held are of the database whose epoch the feed knows; another one's must not mix.
      const epoch = model.lastSeq > 0 ? await this.#epoch() : null;
      const read = await this.#read(`since=${model.lastSeq}&exclude=${LISTS},${REPORTS}`);
      if (!read) return true; // 404: nothing stored yet (the subscribe replays the rest)
      if (epoch && read.epoch !== epoch) return false; // the replay says so (recovered: false)
      // The read holds every message up to through_seq but the held-back ones: those come
      // from the reads below, never from the link, so a live message in that range is
      // dropped (it is in the read, or held back).
      const since = model.lastSeq;
      const through = read.through_seq;
      this.#covered = Math.max(this.#covered, through);
      for (const seq of this.#waiting.keys()) if (seq <= through) this.#waiting.delete(seq);
      read.messages.filter((m) => m.seq > since).forEach((message) => model.apply(message));
      if (model.keepClients && through > since) {
        // Reports before the latest round_end are of ended rounds: the page drops them.
        const current = Math.max(since, model.endSeq);
        this.#deferred.push({ since, until: through, types: LISTS, background: true });
        if (current > since) {
          this.#deferred.push({ since, until: current, types: REPORTS, background: false });
        }
        // A run that ended shows no round under way: its last reports wait for a download.
        // Read before anything later is applied: a client's reports must come in order.
        const range = { since: current, until: through, types: REPORTS, background: false };
        if (current < through && (model.trainingEnd || !(await this.#readRange(range)))) {
          this.#deferred.push(range);
        }
      }
      model.skipTo(through);
      return true;
    } catch (error) {
      console.warn(`fl-stream: could not fetch ${model.runId} (${error.message})`);
      return false;
    } finally {
      this.#applyInOrder();
    }
  }

  /** Read the first held-back range (a background one unless `all`); false: it failed. */
  async #readDeferred(all) {
    const range = this.#deferred.find((held) => all || held.background);
    const done = await this.#readRange(range);
    if (done) this.#deferred.splice(this.#deferred.indexOf(range), 1);
    return done;
  }

  /**
   * Read one range's messages into the model, page by page; `range.since` moves on with
   * each page, so a failed read resumes where it stopped. Returns false when one failed.
   */
  async #readRange(range) {
    for (;;) {
      if (this.#closed) return false;
      const { since, until, types } = range;
      let page;
      try {
        page = await this.#read(
          `since=${since}&until=${until}&types=${types}&max_bytes=${PAGE_BYTES}`,
        );
      } catch (error) {
        const runId = this.model.runId;
        console.warn(`fl-stream: could not fetch ${runId}'s ${types} (${error.message})`);
        return false;
      }
      if (!page) return false; // the run is gone (another database): the page shows it anew
      if (this.#closed) return false;
      this.model.applyEarlier(page.messages);
      this.#onHeldBack();
      if (!page.more) return true;
      range.since = page.through_seq;
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
