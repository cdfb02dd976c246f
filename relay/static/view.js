// The page's text parts: connection indicator, run picker, summary, banners, final results,
// and the details (values that are not drawn).
// Each function takes state and writes it into the page; none keeps state of its own
// beyond what is on the page.

import { tableRow } from "./dom.js";
import { formatDuration, formatNumber, formatTime } from "./format.js";
import { compareMetrics } from "./metrics.js";
import { STATUS, statusLabel } from "./protocol.js";

const $ = (id) => document.getElementById(id);
// A running run silent for this long is probably gone; say so next to its progress.
const STALE_MS = 60_000;

/** Connection indicator: "connecting", "open" or "reconnecting" (retrying at `retryAt`). */
export function showConnection(state, retryAt = null) {
  document.body.dataset.connection = state;
  const text = $("connection-text");
  if (state === "open") text.textContent = "live";
  else if (state === "connecting") text.textContent = "connecting…";
  else {
    const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    text.textContent = seconds ? `offline · retry in ${seconds}s` : "offline · retrying";
  }
}

/** The run picker: "follow newest" first, then every run, newest first. */
export function showRuns(runs, shownRunId, pinnedRunId) {
  const picker = $("run-picker");
  const follow = new Option(
    shownRunId && !pinnedRunId ? `Follow newest run (${shownRunId})` : "Follow newest run",
    "",
  );
  const options = runs.map((run) => {
    const running = run.status === STATUS.running;
    const parts = [
      run.run_id,
      run.mode,
      statusLabel(run.status),
      formatTime(run.first_timestamp),
    ];
    const label = `${running ? "● " : ""}${parts.filter(Boolean).join(" · ")}`;
    const option = new Option(label, run.run_id);
    option.dataset.status = run.status;
    return option;
  });
  if (pinnedRunId && !runs.some((run) => run.run_id === pinnedRunId)) {
    options.unshift(new Option(`${pinnedRunId} (no messages yet)`, pinnedRunId));
  }
  picker.replaceChildren(follow, ...options);
  picker.value = pinnedRunId ?? "";
}

/** Mode, status, progress, elapsed time and time left of the shown run. */
export function showSummary(model, now = Date.now()) {
  document.body.dataset.runId = model.runId;
  document.body.dataset.status = model.status;
  $("run-title").textContent = model.runId;
  $("mode").textContent = model.mode ?? "—";
  const status = $("status");
  status.textContent = statusLabel(model.status);
  status.dataset.status = model.status;
  // The run's messages so far: its seqs count them (1, 2, 3, ...), including those the page
  // has not read (the progress reports of ended rounds, read only for a download).
  $("message-count").textContent = String(Math.max(model.lastSeq, model.messageCount));

  const unit = model.stepUnit;
  const progress = $("progress");
  if (model.step === null) {
    $("progress-text").textContent = "—";
    progress.removeAttribute("value"); // indeterminate while nothing is known
  } else if (model.totalSteps) {
    $("progress-text").textContent = `${unit} ${model.step} of ${model.totalSteps}`;
    progress.value = Math.min(1, model.step / model.totalSteps);
  } else {
    $("progress-text").textContent = `${unit} ${model.step}`;
    progress.removeAttribute("value");
  }
  if (model.isFinished) progress.value = 1;

  const running = !model.isFinished && model.startTime;
  const end = running ? now : model.lastTime?.getTime();
  $("elapsed").textContent = model.startTime ? formatDuration(end - model.startTime) : "—";
  $("eta").textContent = running ? timeLeft(model, now) : model.isFinished ? "done" : "—";
  const silent = running && model.lastTime ? now - model.lastTime.getTime() : 0;
  $("last-update").textContent =
    silent > STALE_MS ? `no message for ${formatDuration(silent)}` : "";
}

function timeLeft(model, now) {
  if (!model.totalSteps || !model.step || !model.stepTime) return "—";
  const perStep = (model.stepTime - model.startTime) / model.step;
  const remaining = model.stepTime.getTime() + perStep * (model.totalSteps - model.step) - now;
  return remaining > 0 ? `≈ ${formatDuration(remaining)}` : "finishing";
}

/** Banners for early stopping (with its reason) and every error the run reported. */
export function showBanners(model) {
  const banners = [];
  const stop = model.earlyStopping;
  if (stop) {
    banners.push(
      banner(
        "warning",
        `Early stopping at epoch ${stop.epoch}: ${stop.reason}`,
        `best ${stop.metric_name} ${formatNumber(stop.best_metric_value)}, ` +
          `patience ${stop.patience}`,
      ),
    );
  }
  for (const error of model.errors) {
    banners.push(banner("error", `Error (${error.error_type}): ${error.error}`));
  }
  $("banners").replaceChildren(...banners);
}

function banner(kind, title, detail = "") {
  const element = document.createElement("div");
  element.className = `banner ${kind}`;
  element.setAttribute("role", kind === "error" ? "alert" : "status");
  const strong = document.createElement("strong");
  strong.textContent = title;
  element.append(strong);
  if (detail) {
    const span = document.createElement("span");
    span.textContent = detail;
    element.append(span);
  }
  return element;
}

/**
 * The final results of a finished run: `run` is /api/runs/{id}/metrics (null when it could
 * not be fetched; the run's own training_end message is shown then).
 */
export function showFinal(model, run) {
  const end = run?.training_end ?? model.trainingEnd;
  const section = $("final-results");
  if (!end) {
    section.hidden = true;
    return;
  }
  const metrics = run?.final_metrics ?? end.final_metrics ?? {};
  const names = Object.keys(metrics).sort(compareMetrics); // in groups, as the charts are
  const tiles = names.map((name) => tile(name, formatNumber(metrics[name])));
  $("final-metrics").replaceChildren(...tiles);

  const facts = [`status ${statusLabel(end.status)}`];
  if (end.best_round != null) facts.push(`best round ${end.best_round}`);
  if (end.best_epoch != null) facts.push(`best epoch ${end.best_epoch}`);
  if (end.best_metric) facts.push(`chosen by ${end.best_metric}`);
  if (run?.first_timestamp && run?.last_timestamp) {
    const took = new Date(run.last_timestamp) - new Date(run.first_timestamp);
    facts.push(`took ${formatDuration(took)}`);
  }
  if (run?.message_count != null) facts.push(`${run.message_count} messages stored`);
  if (!run) facts.push("(relay API unavailable: showing the training_end message)");
  $("final-facts").textContent = facts.join(" · ");
  section.hidden = false;
}

export function hideFinal() {
  $("final-results").hidden = true;
}

function tile(label, value) {
  const element = document.createElement("div");
  element.className = "tile";
  const name = document.createElement("span");
  name.className = "label";
  name.textContent = label;
  const number = document.createElement("span");
  number.className = "value";
  number.textContent = value;
  element.append(name, number);
  return element;
}

/** Values the charts cannot draw (lists, strings): the latest of each metric, where it came from. */
export function showDetails(model) {
  const section = $("details");
  const entries = [...model.details.values()].sort(
    (a, b) => compareMetrics(a.metric, b.metric) || a.where.localeCompare(b.where),
  );
  section.hidden = entries.length === 0;
  const rows = entries.map(({ where, metric, step, value }) => {
    const at = step === null ? where : `${where}, ${model.stepUnit} ${step}`;
    const tr = tableRow("td", [metric, at, formatNumber(value)]);
    tr.dataset.metric = metric;
    return tr;
  });
  $("details-rows").replaceChildren(...rows);
}
