#!/usr/bin/env bash
# Build the board and take full-page PNG screenshots of its index and first family page with headless Chromium.
#   scripts/screenshot_board.sh [RESULTS_DIR] [OUT_DIR]
# RESULTS_DIR: a results folder (or a parent of several); default: the synthetic results of tests/board.
# OUT_DIR: where the site and the PNGs go (default: a new temporary folder, printed at the end).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python=python3
browser="${QSENS_CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
[ -n "$browser" ] || { echo "no chromium: apt-get install -y chromium" >&2; exit 2; }
out="${2:-$(mktemp -d -t qsens-board-XXXX)}"
mkdir -p "$out"
results="${1:-}"
if [ -z "$results" ]; then
  results="$out/results"
  rm -rf "$results"
  "$python" "$repo/tests/board/board_synthetic.py" "$results" >/dev/null
fi
"$python" -m qsens board --results "$results" --out "$out/site"
shoot() {  # page, png, height
  "$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,"$3" \
    --user-data-dir="$out/.chromium" --screenshot="$2" "file://$1" >/dev/null 2>&1
}
shoot "$out/site/index.html" "$out/index.png" 1800
family="$(ls "$out"/site/family/*.html | head -n 1)"
shoot "$family" "$out/family.png" 2600
echo "site: $out/site/index.html"
echo "screenshots: $out/index.png $out/family.png"
