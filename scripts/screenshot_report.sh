#!/usr/bin/env bash
# Render a run's HTML report in headless Chromium and save a full-page screenshot.
#   scripts/screenshot_report.sh out/demo            -> out/demo/report/screenshot.png
# Needs Debian's chromium (apt-get install chromium). The flags keep Chromium off the network.
set -euo pipefail
root=${1:-out/demo}
index="$root/report/index.html"
[ -f "$index" ] || .venv/bin/llmctl report "$root"
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no chromium found: apt-get install chromium" >&2; exit 1; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1200,${HEIGHT:-5200} \
  --screenshot="$root/report/screenshot.png" "file://$(realpath "$index")" 2>/dev/null
echo "$root/report/screenshot.png"
