#!/usr/bin/env bash
# Wheels that `bench gpu-check` needs on the nvidia-h200 machine, whose Python (3.12; torch, transformers, accelerate,
# peft, pandas, matplotlib, typer, rich, safetensors, timm, regex, torchvision there) has no diffusers, open_clip_torch,
# datasets or optuna and no network. Run here, from the repository root; the wheels land in .whl/ (git-ignored via
# .git/info/exclude), which `tests/gpu/run.sh` installs there. Versions: those this suite is tested with.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
platforms=()
for n in 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 importlib_metadata==10.2.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 optuna==5.0.0 alembic==1.20.1 colorlog==6.12.0 \
    sqlalchemy==2.1.9 mako==1.3.10
du -sh .whl
