// The dashboard's Plotly: the core (which holds the scatter trace) with the bar and heatmap
// traces, nothing else. Plotly's cartesian bundle takes 2.8 times as long to start up in
// chromium (0.5 s against 0.18 s on a 2-core machine), mostly for traces the page never
// draws (box, contour, histogram2d, violin...). Built by build.sh; see docs/dashboard.md.
var Plotly = require("plotly.js/lib/core");

Plotly.register([require("plotly.js/lib/bar"), require("plotly.js/lib/heatmap")]);

module.exports = Plotly;
