#!/usr/bin/env bash
# Remake docs/leaderboard-page.png (the README's picture of results/index.html) after `bench leaderboard`:
# headless Chromium at 1400x1800, reduced to 256 colours. Run from the repository root.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking --hide-scrollbars \
  --user-data-dir="$tmp/profile" --screenshot="$tmp/page.png" --window-size=1400,1800 "file://$PWD/results/index.html"
python -c "from PIL import Image; Image.open('$tmp/page.png').convert('RGB').quantize(256).save('docs/leaderboard-page.png', optimize=True)"
