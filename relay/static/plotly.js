// Plotly (static/vendor/: its core with the bar and heatmap traces, scripts/plotly/). index.html
// preloads it, so it downloads at once, but it runs only when the page asks (loadPlotly):
// after the page has sent its first requests, so that the time Plotly takes to start up
// (0.18 s in headless chromium on a 2-core machine) overlaps them instead of delaying them.

/* global Plotly */

let loaded = null;

/** Run the preloaded bundle; resolves once window.Plotly is there, rejects if it failed. */
export function loadPlotly() {
  loaded ??= new Promise((resolve, reject) => {
    if (typeof Plotly !== "undefined") {
      resolve();
      return;
    }
    const script = document.createElement("script");
    script.src = document.getElementById("plotly-preload").href;
    script.addEventListener("load", () => resolve(), { once: true });
    script.addEventListener("error", () => reject(new Error(`could not load ${script.src}`)), {
      once: true,
    });
    document.head.append(script);
  });
  return loaded;
}

/** The Plotly library (only after loadPlotly has resolved). */
export function plotly() {
  return Plotly;
}
