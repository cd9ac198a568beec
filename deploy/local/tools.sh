#!/usr/bin/env bash
# System tools the test suite uses besides the stack (docker-compose; gdalinfo), installed from
# Debian when missing.
set -euo pipefail

need=()
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v gdalinfo >/dev/null 2>&1 || need+=(gdal-bin) # reads result COGs over HTTP
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
    echo "tools: installed ${need[*]}"
fi

# The inference map page: npm (to install MapLibre GL by its lock, `make viewer`) and Chromium
# for its browser test (services/inference/tests/test_viewer_browser.py): Debian's own build at
# /usr/bin/chromium, driven by Playwright for Python (never `playwright install`, which
# downloads a browser from the internet).
viewer=()
[[ -x /usr/bin/chromium ]] || viewer+=(chromium)
command -v npm >/dev/null 2>&1 || viewer+=(npm)
if ((${#viewer[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${viewer[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${viewer[@]}" >/dev/null; }
    echo "tools: installed ${viewer[*]}"
fi
