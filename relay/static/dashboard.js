// The dashboard: shows one run (?run=, or the newest) or compares several (?compare=), keeps
// their messages complete and in order, keeps the run list current, and draws through one
// FrameLoop, so that what a live message costs to draw never depends on the run's length.
//
// The run list comes from /api/runs once at the start (and again after a reconnect); after
// that the relay's run_summary frames, where it sends them, and the messages the page
// receives keep it current. A relay that does not send run_summary frames gets a
// subscription to every run's live messages instead, so that the page still sees new runs.
//
// Each shown run has a RunFeed: what the relay stored (over HTTP), then a subscription with
// `since` = the last seq held, so a late or reconnecting page first receives what it missed,
// then live messages. A catch-up is drawn once, when the stored messages are in.

import { apiFetch, askForToken, onNewToken, refusal, viewerToken } from "./auth.js";
import { CompareView, MAX_COMPARED, MIN_COMPARED } from "./compare.js";
import { ChartGrid, runSource } from "./charts.js";
import { ClientView } from "./clients.js";
import { RelayConnection, control, relayUrl } from "./connection.js";
import { download, fileStem, runToCsv, runToJson } from "./export.js";
import { RunFeed } from "./feed.js";
import { ProgressView } from "./progress.js";
import { FrameLoop } from "./loop.js";
import { loadPlotly } from "./plotly.js";
import { DEFAULT_RUN, METRICS, RELAY_PUSHES_RUN_SUMMARIES } from "./protocol.js";
import { RunModel } from "./run.js";
import { RunList } from "./runlist.js";
import * as view from "./view.js";

const $ = (id) => document.getElementById(id);
// The client view (a heatmap and a table of every client: tens of ms each at 100 clients)
// may be drawn this much after the metric charts, so a round's last message reaches the
// charts without waiting behind the client view of its earlier ones.
const CLIENT_VIEW_LAG_MS = 250;

class Dashboard {
  #runs = new RunList();
  #runsLoaded = null; // the latest /api/runs fetch
  #epoch = null; // the relay database's epoch, as /api/runs said
  #feeds = new Map(); // run id -> RunFeed of every run shown (one, or the compared ones)
  #model = null; // the run view's run
  #pinnedRunId; // chosen by the user (or ?run=); null: follow the newest run
  #compared = null; // run ids of the compare view, or null: the run view
  #opened = false; // the link opened once already (a later open is a reconnect)
  #plotted = false; // Plotly has loaded
  #summarised = ""; // the messageCount and lastSeq the summary shows
  #retryAt = null;

  constructor() {
    const params = new URLSearchParams(window.location.search);
    this.#pinnedRunId = params.get("run");
    const compared = comparedIds(window.location.search);
    // ?heartbeat=<seconds>: how often to check the link (a silent link dies after 2.5 of them).
    const heartbeat = Number(params.get("heartbeat"));
    const request = () => this.loop.request();
    this.charts = new ChartGrid($("metric-charts"), request, { pinned: METRICS });
    this.clients = new ClientView($("clients"), request);
    this.progress = new ProgressView($("round-progress"), request);
    this.compare = new CompareView($("compare-view"), request);
    const whenPlotted = (painter, inView, lagMs = 0) => ({
      pending: () => (this.#plotted && inView() ? painter.pending() : undefined),
      step: () => painter.step(),
      lagMs,
    });
    const runView = () => !this.#compared && this.#model && !this.#feedOf(this.#model).replaying;
    // The client view waits for the clients' lists, which come after the charts are drawn.
    const detailed = () => runView() && this.#feedOf(this.#model).detailed;
    const compareView = () => this.#compared && [...this.#feeds.values()].every((f) => !f.replaying);
    this.loop = new FrameLoop(
      [
        whenPlotted(this.charts, () => !this.#compared),
        whenPlotted(this.progress, runView),
        whenPlotted(this.clients, detailed, CLIENT_VIEW_LAG_MS),
        whenPlotted(this.compare, compareView),
      ],
      { before: () => this.#beforeFrame(), whenDone: () => this.#drawn() },
    );
    this.connection = new RelayConnection(
      relayUrl(),
      {
        onOpen: () => this.#onOpen(),
        onMessage: (message) => this.#onMessage(message),
        onState: (state, retryAt) => {
          this.#retryAt = retryAt;
          view.showConnection(state, retryAt);
        },
      },
      heartbeat > 0 ? { pingEveryMs: heartbeat * 1000 } : {},
    );
    onNewToken(() => this.connection.renew());
    $("run-picker").addEventListener("change", (event) => this.#pin(event.target.value || null));
    $("download-csv").addEventListener("click", () => this.#download("csv", runToCsv, "text/csv"));
    $("download-json").addEventListener("click", () => {
      this.#download("json", runToJson, "application/json");
    });
    this.#wireCompareDialog();
    this.compare.section.addEventListener("linechange", () => this.#setUrl());
    setInterval(() => this.#tick(), 1000);
    if (compared.length) this.#compare(compared, params.get("line"));
    else this.#showRun(this.#pinnedRunId);
  }

  start() {
    // The link and the run list at once: a pinned run or a comparison needs no list to start.
    // (The constructor has sent the shown run's first read.) Plotly runs after these are sent.
    this.#runsLoaded = this.#loadRuns();
    this.connection.start();
    loadPlotly().then(
      () => {
        this.#plotted = true;
        this.loop.request();
      },
      (error) => {
        $("empty-state").hidden = false;
        $("empty-state").textContent = `The dashboard ${error.message}; reload the page.`;
        console.error(`fl-stream: ${error.message}`);
      },
    );
  }

  async #download(extension, build, type) {
    const model = this.#model;
    if (!model || this.#compared) return;
    const feed = this.#feedOf(model);
    const buttons = [$("download-csv"), $("download-json")];
    buttons.forEach((button) => {
      button.disabled = true; // until every message of the run is read (one file a click)
      button.setAttribute("aria-busy", "true");
    });
    try {
      await feed.readHeldBack({ all: true });
    } finally {
      buttons.forEach((button) => {
        button.disabled = false;
        button.removeAttribute("aria-busy");
      });
    }
    if (model !== this.#model) return;
    // Incomplete (the relay is unreachable): no file that looks whole but is not.
    const problem = feed.complete ? "" : "could not read all of the run's messages; try again";
    buttons.forEach((button) => button.classList.toggle("incomplete", Boolean(problem)));
    $("download-csv").parentElement.title = problem;
    if (problem) console.warn(`fl-stream: ${problem}`);
    else download(`${fileStem(model.runId)}.${extension}`, build(model), type);
  }

  // ----------------------------------------------------------------------- the link

  async #onOpen() {
    const reconnect = this.#opened;
    this.#opened = true;
    if (reconnect) this.#runsLoaded = this.#loadRuns(); // whatever changed while it was down
    this.#feeds.forEach((feed) => feed.subscribe());
    if (!RELAY_PUSHES_RUN_SUMMARIES) {
      // Every run, live, so new runs and finished ones update the list; after the list has
      // come, so that only runs it does not hold are news.
      await this.#runsLoaded;
      this.connection.send(control("subscribe", { run_id: null, since: null }));
    }
  }

  #onMessage(message) {
    switch (message.type) {
      case "ack":
      case "authenticated":
        return;
      case "rejected":
        // A relay with a viewer token refuses a subscription without it (or a wrong token's
        // auth frame): ask for the token; a new one authenticates the link again.
        if (String(message.data?.reason ?? "").startsWith("unauthorised")) {
          askForToken(refusal(Boolean(viewerToken())));
        }
        return;
      case "replay_end": {
        const feed = this.#feeds.get(message.data?.run_id);
        if (feed && !feed.endReplay(message.data ?? {})) this.#reshow();
        this.loop.request();
        return;
      }
      case "run_summary":
        this.#runSummary(message.data);
        return;
      default:
        break;
    }
    const runId = message.run_id ?? DEFAULT_RUN;
    const change = this.#runs.note(message);
    if (change === "new") this.#newRun(runId);
    else if (change) this.#showRuns();
    const shown = this.#feeds.get(runId);
    if (shown) {
      shown.receive(message);
      // Progress reports come steadily, not in bursts that a chart would draw many times.
      if (message.type === "client_progress") this.loop.request();
      else this.loop.requestAfterBurst();
    }
  }

  // ----------------------------------------------------------------------- runs

  async #loadRuns() {
    let listed;
    try {
      const response = await apiFetch("api/runs", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      listed = await response.json(); // {epoch, runs}
    } catch (error) {
      console.warn(`fl-stream: could not list runs (${error.message}); will retry on reconnect`);
      return;
    }
    this.#runs.replace(listed.runs);
    this.#epoch = listed.epoch ?? null;
    const newest = this.#runs.sorted()[0]?.run_id;
    if (!this.#compared && !this.#pinnedRunId && newest) this.#showRun(newest);
    this.#showRuns();
  }

  #runSummary(summary) {
    if (!summary || typeof summary.run_id !== "string") return;
    const isNew = !this.#runs.has(summary.run_id);
    this.#runs.upsert(summary);
    if (isNew) this.#newRun(summary.run_id);
    else this.#showRuns();
  }

  #newRun(runId) {
    // A run that just started is the newest: a page that follows the newest shows it.
    if (!this.#compared && !this.#pinnedRunId) this.#showRun(runId);
    this.#showRuns();
  }

  #showRuns() {
    view.showRuns(this.#runs.sorted(), this.#model?.runId, this.#pinnedRunId);
  }

  #feedOf(model) {
    return this.#feeds.get(model.runId);
  }

  /** Replace the shown runs' feeds by new ones for these models. */
  #follow(models) {
    this.#feeds.forEach((feed) => feed.unsubscribe());
    const epoch = async () => {
      await this.#runsLoaded;
      return this.#epoch;
    };
    const request = () => this.loop.request();
    const feeds = models.map((model) => new RunFeed(model, this.connection, epoch, request));
    this.#feeds = new Map(feeds.map((feed) => [feed.runId, feed]));
    feeds.forEach((feed) => feed.subscribe()); // the stored messages at once, link or not
  }

  #pin(runId) {
    this.#pinnedRunId = runId;
    this.#compared = null;
    this.#setUrl();
    this.#showRun(runId ?? this.#runs.sorted()[0]?.run_id ?? null);
  }

  /** The run view on one run (null: none yet, the placeholder charts). */
  #showRun(runId) {
    if (!this.#compared && runId !== null && this.#model?.runId === runId) return;
    this.#compared = null;
    document.body.dataset.view = "run";
    delete document.body.dataset.lastSeq; // until this run is drawn
    const model = new RunModel(runId);
    this.#model = runId === null ? null : model;
    this.#follow(this.#model ? [model] : []);
    this.#summarised = "";
    this.charts.setSource(runSource(model));
    this.clients.show(this.#model);
    this.progress.show(this.#model);
    view.hideFinal();
    view.showDetails(model);
    if (this.#model) {
      $("empty-state").hidden = true;
      view.showSummary(model);
    }
    this.#showRuns();
    this.loop.request();
  }

  /** Show the same runs anew, from nothing (the relay changed databases). */
  #reshow() {
    if (this.#compared) {
      this.#compare(this.#compared, this.compare.line);
    } else {
      const runId = this.#model.runId;
      this.#model = null; // so #showRun does not keep it
      this.#showRun(runId);
    }
  }

  /** The compare view on these runs (at most MAX_COMPARED), drawing `line` of each. */
  #compare(runIds, line) {
    const ids = [...new Set(runIds)].slice(0, MAX_COMPARED);
    this.#compared = ids;
    this.#model = null;
    document.body.dataset.view = "compare";
    delete document.body.dataset.lastSeq;
    $("empty-state").hidden = true;
    // A comparison draws each run's lines only: no client data, no messages kept.
    const models = ids.map((id) => new RunModel(id, { keepClients: false, keepMessages: false }));
    this.#follow(models);
    this.compare.show(models, line);
    this.#setUrl();
    this.#showRuns();
    this.loop.request();
  }

  /** The URL says what is shown: ?run=, or ?compare=a,b,c (and &line=), so it can be shared. */
  #setUrl() {
    const url = new URL(window.location.href);
    for (const name of ["run", "compare", "line"]) url.searchParams.delete(name);
    if (this.#compared) {
      if (this.compare.line !== "evaluation") url.searchParams.set("line", this.compare.line);
      // Written by hand: URLSearchParams would turn the commas into %2C.
      const ids = this.#compared.map(encodeURIComponent).join(",");
      url.search = `?compare=${ids}${url.search ? `&${url.search.slice(1)}` : ""}`;
    } else if (this.#pinnedRunId) {
      url.searchParams.set("run", this.#pinnedRunId);
    }
    window.history.replaceState(null, "", url);
  }

  #wireCompareDialog() {
    const dialog = $("compare-dialog");
    const list = $("compare-choices");
    const go = $("compare-go");
    const picked = () => [...list.querySelectorAll("input:checked")].map((box) => box.value);
    const count = () => {
      const n = picked().length;
      go.disabled = n < MIN_COMPARED || n > MAX_COMPARED;
      $("compare-count").textContent = `${n} picked (${MIN_COMPARED} to ${MAX_COMPARED})`;
    };
    $("compare-open").addEventListener("click", () => {
      const current = new Set(this.#compared ?? [this.#model?.runId].filter(Boolean));
      const runs = this.#runs.sorted();
      list.replaceChildren(
        ...runs.map((run) => {
          const label = document.createElement("label");
          const box = document.createElement("input");
          box.type = "checkbox";
          box.value = run.run_id;
          box.checked = current.has(run.run_id);
          label.append(box, ` ${run.run_id}`);
          return label;
        }),
      );
      count();
      dialog.showModal();
    });
    list.addEventListener("change", count);
    go.addEventListener("click", () => {
      dialog.close();
      this.#compare(picked(), this.compare.line);
    });
    $("compare-cancel").addEventListener("click", () => dialog.close());
    $("compare-close").addEventListener("click", () => this.#pin(this.#pinnedRunId));
  }

  // ----------------------------------------------------------------------- drawing

  /** At the start of each frame: the text parts, and what the model's changes mean. */
  #beforeFrame() {
    if (this.#compared) {
      const rewritten = new Set();
      for (const feed of this.#feeds.values()) {
        if (!feed.replaying) feed.model.takeChanges().rewrite.forEach((m) => rewritten.add(m));
      }
      this.compare.refresh(this.#runs, rewritten);
      return;
    }
    const model = this.#model;
    if (!model) return;
    const shown = `${model.messageCount}|${model.lastSeq}`;
    if (shown !== this.#summarised) {
      this.#summarised = shown;
      view.showSummary(model);
      view.showBanners(model);
    }
    if (this.#feedOf(model).replaying) return; // drawn once, when the replay ends
    const changes = model.takeChanges();
    this.charts.invalidate(changes.rewrite);
    this.charts.sync();
    if (changes.clientPhases.size || changes.counts) {
      this.clients.changed({ phases: changes.clientPhases, counts: changes.counts });
    }
    if (changes.details) view.showDetails(model);
    if (changes.finished) this.#showFinal(model);
  }

  /** A frame left nothing to draw: the page shows every message it holds. */
  #drawn() {
    const model = this.#model;
    if (!this.#plotted || this.#compared || !model || this.#feedOf(model).replaying) return;
    // A chart just added may be on screen, and not drawn yet: the observer says so soon.
    if (!this.charts.settled) return;
    const feed = this.#feedOf(model);
    // The clients' lists once the charts are drawn: their reads would hold up the first paint.
    if (!feed.detailed) {
      feed.readHeldBack();
      return;
    }
    // For tests and scripts: the last seq the page has drawn.
    document.body.dataset.lastSeq = String(model.lastSeq);
  }

  async #showFinal(model) {
    let run = null;
    try {
      // since=lastSeq: the run's summary and final metrics without its messages again.
      const path = `api/runs/${encodeURIComponent(model.runId)}/metrics?since=${model.lastSeq}`;
      const response = await apiFetch(path, { cache: "no-store" });
      if (response.ok) run = await response.json();
    } catch (error) {
      console.warn(`fl-stream: could not fetch the final results (${error.message})`);
    }
    if (model === this.#model) view.showFinal(model, run);
  }

  #tick() {
    this.progress.tick();
    if (this.#model && !this.#model.isFinished) view.showSummary(this.#model);
    if (document.body.dataset.connection === "reconnecting") {
      view.showConnection("reconnecting", this.#retryAt);
    }
  }
}

/** The run ids of ?compare=a,b,c: split before decoding, so an id may hold a (%2C) comma. */
function comparedIds(search) {
  const raw = search.slice(1).split("&").find((part) => part.startsWith("compare="));
  if (!raw) return [];
  return raw.slice("compare=".length).split(",").filter(Boolean).map(decodeURIComponent);
}

new Dashboard().start();
