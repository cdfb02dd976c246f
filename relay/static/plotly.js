// Plotly, loaded by index.html with `async`: the page connects, replays and builds its model
// while the 4.8 MB bundle downloads and compiles, and draws once it is there.

/* global Plotly */

const script = document.getElementById("plotly-script");

/** Resolves once window.Plotly is there; rejects when the bundle could not be loaded. */
export const plotlyReady = new Promise((resolve, reject) => {
  if (typeof Plotly !== "undefined") {
    resolve();
    return;
  }
  const failed = () => reject(new Error("could not load plotly.min.js"));
  if (script.dataset.failed) {
    failed(); // before this module ran (index.html's onerror noted it)
    return;
  }
  script.addEventListener("load", () => resolve(), { once: true });
  script.addEventListener("error", failed, { once: true });
});

/** The Plotly library (only after plotlyReady). */
export function plotly() {
  return Plotly;
}
