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
