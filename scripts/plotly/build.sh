#!/usr/bin/env bash
# Rebuild the dashboard's Plotly bundle (relay/static/vendor/) from npm: the pinned
# plotly.js and esbuild of package.json and package-lock.json, entry.js's traces only.
# Needs Node.js and npm; run it from anywhere, then commit the bundle it writes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
npm ci --no-audit --no-fund --ignore-scripts
version="$(node -p 'require("plotly.js/package.json").version')"
out="../../relay/static/vendor/plotly-${version}-fl-stream.min.js"
# As Plotly's own esbuild-config.js builds it; map traces' CSS (maplibre) is not needed.
npx esbuild entry.js --bundle --minify --format=iife --global-name=Plotly \
  --define:global=window --define:define.amd=false --define:process.env.NODE_DEBUG=false \
  --target=es2016 --loader:.css=empty --legal-comments=eof --outfile="$out" \
  --banner:js="/* plotly.js v${version} (MIT: LICENSE-plotly.txt), its core with the bar and heatmap traces: scripts/plotly/build.sh */"
echo "wrote $out; update index.html's preload link if the version changed"
