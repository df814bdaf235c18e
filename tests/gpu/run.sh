#!/usr/bin/env bash
# `bench gpu-check` on a CUDA machine without network, from the repository root, with the wheels of
# tests/gpu/fetch_wheels.sh in .whl/: installs them beside the machine's own packages, then runs the check at the real
# SD 1.5 / SDXL shapes; the record goes to $OUT/gpu-check.json (the device tool's output folder) or ./gpu-check.json.
# Extra arguments go to `bench gpu-check` (e.g. --families sd15 --methods dpo,grpo).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m bench.cli \
    gpu-check --device cuda --json "${OUT:-.}/gpu-check.json" "$@"
