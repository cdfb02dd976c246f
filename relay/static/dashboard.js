// The dashboard: picks a run, keeps its messages complete and in order, and redraws the page
// at most once per animation frame.
//
// Charts are the costly part: a catch-up replay is drawn once, when it ends, and live
// points are drawn in batches (Plotly.extendTraces) spaced so that drawing never takes more
// than a third of the page's time, however many points the charts hold.
//
// The page subscribes to every run live (to notice new runs) and to the shown run with
// `since` = the last seq it holds, so a late or reconnecting page first receives what it
// missed, then live messages. Messages of the shown run are applied strictly in seq order:
// duplicates are dropped, and a message that arrives ahead of a missing one waits until
// the replay fills the gap.

import { RelayConnection, control, relayUrl } from "./connection.js";
import { RunModel } from "./run.js";
import { MetricCharts } from "./charts.js";
import { ClientView } from "./clients.js";
import { download, fileStem, runToCsv, runToJson } from "./export.js";
import { DEFAULT_RUN } from "./protocol.js";
import * as view from "./view.js";

class Dashboard {
  #model = null; // the shown run
  #runs = []; // /api/runs, newest first
  #knownRunIds = new Set();
  #pinnedRunId; // chosen by the user (or ?run=); null: follow the newest run
  #waiting = new Map(); // seq -> message of the shown run that arrived ahead of its turn
  #replaying = false; // a subscribe with `since` is being answered
  #frame = 0;
  #chartsFreeAt = 0; // performance.now() before which the charts are not drawn again
  #later = null; // the timer that draws the charts once they are free
  #summarised = -1; // messages count the summary shows
  #refreshing = null;
  #refreshAgain = false;
  #retryAt = null;

  constructor() {
    const params = new URLSearchParams(window.location.search);
    this.#pinnedRunId = params.get("run");
    // ?heartbeat=<seconds>: how often to check the link (a silent link dies after 2.5 of them).
    const heartbeat = Number(params.get("heartbeat"));
    this.charts = new MetricCharts(document.getElementById("metric-charts"));
    this.clients = new ClientView(document.getElementById("clients"));
    this.connection = new RelayConnection(relayUrl(), {
      onOpen: () => this.#onOpen(),
      onMessage: (message) => this.#onMessage(message),
      onState: (state, retryAt) => {
        this.#retryAt = retryAt;
        view.showConnection(state, retryAt);
      },
    }, heartbeat > 0 ? { pingEveryMs: heartbeat * 1000 } : {});
    document.getElementById("run-picker").addEventListener("change", (event) => {
      this.#pin(event.target.value || null);
    });
    document.getElementById("download-csv").addEventListener("click", () => {
      this.#download("csv", runToCsv, "text/csv");
    });
    document.getElementById("download-json").addEventListener("click", () => {
      this.#download("json", runToJson, "application/json");
    });
    setInterval(() => this.#tick(), 1000);
  }

  #download(extension, build, type) {
    const model = this.#model;
    if (model) download(`${fileStem(model.runId)}.${extension}`, build(model), type);
  }

  async start() {
    this.charts.redrawAll(new RunModel(null));
    // Runs already stored are "known" before live messages arrive, so only new ones are news.
    await this.#refreshRuns();
    this.connection.start();
  }

  // ----------------------------------------------------------------------- the link

  #onOpen() {
    // Every run, live: a new run, or one that finished, updates the picker.
    this.connection.send(control("subscribe", { run_id: null, since: null }));
    if (this.#model) this.#subscribe();
    this.#refreshRuns(); // whatever changed while the link was down
  }

  #subscribe() {
    this.#replaying = true;
    const data = { run_id: this.#model.runId, since: this.#model.lastSeq };
    this.connection.send(control("subscribe", data));
  }

  #onMessage(message) {
    if (message.type === "replay_end") {
      if (message.data?.run_id === this.#model?.runId) this.#endReplay();
      return;
    }
    if (message.type === "ack" || message.type === "rejected") return; // for publishers
    const runId = message.run_id ?? DEFAULT_RUN;
    if (!this.#knownRunIds.has(runId)) this.#discover(runId);
    if (runId === this.#model?.runId) this.#receive(message);
    if (message.type === "training_end" || message.type === "error") this.#refreshRuns();
  }

  #receive(message) {
    const model = this.#model;
    const seq = message.seq;
    if (!Number.isInteger(seq)) {
      model.apply(message); // a relay that does not number messages: nothing to order by
    } else if (seq > model.lastSeq && !this.#waiting.has(seq)) {
      this.#waiting.set(seq, message);
      this.#applyInOrder();
      // A hole in the live stream (e.g. the relay dropped us for a moment): fetch it.
      if (this.#waiting.size && !this.#replaying) this.#subscribe();
    }
    this.#schedule();
  }

  #applyInOrder() {
    const model = this.#model;
    let next;
    while ((next = this.#waiting.get(model.lastSeq + 1))) {
      this.#waiting.delete(next.seq);
      model.apply(next);
    }
  }

  #endReplay() {
    this.#replaying = false;
    this.#applyInOrder();
    // The relay has sent every stored message: a hole still open is one the run never had.
    const rest = [...this.#waiting.values()].sort((a, b) => a.seq - b.seq);
    this.#waiting.clear();
    rest.forEach((message) => this.#model.apply(message));
    this.#drawAll();
  }

  // ----------------------------------------------------------------------- runs

  #discover(runId) {
    this.#knownRunIds.add(runId);
    if (!this.#pinnedRunId) this.#show(runId); // a run that just started is the newest
    this.#refreshRuns();
  }

  #pin(runId) {
    this.#pinnedRunId = runId;
    const url = new URL(window.location.href);
    if (runId) url.searchParams.set("run", runId);
    else url.searchParams.delete("run");
    window.history.replaceState(null, "", url);
    const newest = this.#runs[0]?.run_id;
    if (runId ?? newest) this.#show(runId ?? newest);
    this.#showRuns();
  }

  #show(runId) {
    if (this.#model?.runId === runId) return;
    if (this.#model) this.connection.send(control("unsubscribe", { run_id: this.#model.runId }));
    this.#model = new RunModel(runId);
    this.#waiting.clear();
    this.clients.reset();
    view.hideFinal();
    this.#drawAll();
    document.getElementById("empty-state").hidden = true;
    this.#subscribe();
    this.#showRuns();
  }

  async #refreshRuns() {
    if (this.#refreshing) {
      this.#refreshAgain = true; // one more fetch once this one is done
      return this.#refreshing;
    }
    this.#refreshing = (async () => {
      do {
        this.#refreshAgain = false;
        await this.#fetchRuns();
      } while (this.#refreshAgain);
      this.#refreshing = null;
    })();
    return this.#refreshing;
  }

  async #fetchRuns() {
    let runs;
    try {
      const response = await fetch("api/runs", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      runs = (await response.json()).runs;
    } catch (error) {
      console.warn(`fl-stream: could not list runs (${error.message}); will retry on reconnect`);
      return;
    }
    // Newest first by start time: "most recently active" would flip between parallel runs.
    this.#runs = runs.sort((a, b) => b.first_timestamp.localeCompare(a.first_timestamp));
    runs.forEach((run) => this.#knownRunIds.add(run.run_id));
    const shown = this.#model?.runId;
    const shownIsListed = runs.some((run) => run.run_id === shown);
    if (this.#pinnedRunId) this.#show(this.#pinnedRunId);
    else if (runs.length && (!shown || shownIsListed)) this.#show(runs[0].run_id);
    this.#showRuns();
  }

  #showRuns() {
    view.showRuns(this.#runs, this.#model?.runId, this.#pinnedRunId);
  }

  // ----------------------------------------------------------------------- drawing

  #schedule() {
    if (!this.#frame) this.#frame = requestAnimationFrame(() => this.#render());
  }

  /** One frame: the summary always; the charts unless a replay is on or they drew recently. */
  #render() {
    this.#frame = 0;
    const model = this.#model;
    if (model.messages.length !== this.#summarised) {
      this.#summarised = model.messages.length;
      view.showSummary(model);
      view.showBanners(model);
    }
    if (this.#replaying) return; // drawn whole by #drawAll when the replay ends
    const wait = this.#chartsFreeAt - performance.now();
    if (wait > 0) {
      this.#later ??= setTimeout(() => {
        this.#later = null;
        this.#schedule();
      }, wait);
      return;
    }
    const started = performance.now();
    const changes = model.takeChanges();
    this.charts.update(model, changes);
    if (changes.clients) this.clients.update(model);
    if (changes.finished) this.#showFinal(model);
    this.#drawn(model, started);
  }

  /** Draw the whole run at once (after a replay: one Plotly.react per chart). */
  #drawAll() {
    const model = this.#model;
    const started = performance.now();
    model.takeChanges(); // all of it is drawn below
    this.charts.redrawAll(model);
    this.clients.update(model);
    view.showSummary(model);
    view.showBanners(model);
    this.#summarised = model.messages.length;
    if (model.trainingEnd) this.#showFinal(model);
    this.#drawn(model, started);
  }

  #drawn(model, started) {
    const now = performance.now();
    this.#chartsFreeAt = now + 2 * (now - started);
    // For tests and scripts: the last seq that is on the charts.
    document.body.dataset.lastSeq = String(model.lastSeq);
  }

  async #showFinal(model) {
    let run = null;
    try {
      // since=lastSeq: the run's summary and final metrics without its messages again.
      const path = `api/runs/${encodeURIComponent(model.runId)}/metrics?since=${model.lastSeq}`;
      const response = await fetch(path, { cache: "no-store" });
      if (response.ok) run = await response.json();
    } catch (error) {
      console.warn(`fl-stream: could not fetch the final results (${error.message})`);
    }
    if (model === this.#model) view.showFinal(model, run);
  }

  #tick() {
    if (this.#model && !this.#model.isFinished) view.showSummary(this.#model);
    if (document.body.dataset.connection === "reconnecting") {
      view.showConnection("reconnecting", this.#retryAt);
    }
  }
}

new Dashboard().start();
