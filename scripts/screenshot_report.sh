#!/usr/bin/env bash
# Render a run's HTML report in headless Chromium and save a screenshot of the whole page.
#   scripts/screenshot_report.sh out/demo            -> out/demo/report/screenshot.png
# Needs Debian's chromium (apt-get install chromium). The flags keep Chromium off the network.
# Chromium's --screenshot captures the window, so the page is measured first: a copy of the page
# with one line of script that writes its height into the title is loaded with --dump-dom, and
# the screenshot is then taken with a window that tall (WIDTH, default 1200 px, is the same in both).
set -euo pipefail
root=${1:-out/demo}
index="$root/report/index.html"
[ -f "$index" ] || .venv/bin/llmctl report "$root"
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no chromium found: apt-get install chromium" >&2; exit 1; }
width=${WIDTH:-1200}
profile=$(mktemp -d)
probe="$(dirname "$index")/.measure-$$.html"  # beside index.html, so its images load the same
trap 'rm -rf "$profile" "$probe"' EXIT
chrome() {  # chrome WINDOW_HEIGHT ARGS...
  local h=$1
  shift
  "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size="$width,$h" "$@" 2>/dev/null
}
sed 's|</body>|<script>window.onload=function(){document.title="height:"+document.documentElement.scrollHeight}</script></body>|' \
  "$index" > "$probe"
height=$(chrome 800 --virtual-time-budget=5000 --dump-dom "file://$(realpath "$probe")" \
  | sed -n 's|.*<title>height:\([0-9]*\)</title>.*|\1|p' | head -1)
[ -n "$height" ] || { echo "could not measure the page height" >&2; exit 1; }
chrome "$height" --screenshot="$root/report/screenshot.png" "file://$(realpath "$index")"
echo "$root/report/screenshot.png (${width}x${height})"
