"""Run a script with the project's Python from inside the refcheck tox env (whose own Python has the old
stack the reference packages need, and cannot import the project).

    python tests/refcheck/in_main_env.py SCRIPT [ARGS...]

The project's Python is the first that can import `metrics.hps` and `metrics.imagereward` (with the repository
on PYTHONPATH) among: $BENCH_MAIN_PYTHON; `python3`/`python` on PATH outside this env (e.g. the activated
project venv `tox` was started from); the default tox env `.tox/py` (`tox -e py --notest` makes it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = "import metrics.hps, metrics.imagereward"


def candidates() -> list[str]:
    found = [os.environ["BENCH_MAIN_PYTHON"]] if os.environ.get("BENCH_MAIN_PYTHON") else []
    own_bin = Path(sys.executable).parent.resolve()
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != own_bin)
    found += [exe for name in ("python3", "python") if (exe := shutil.which(name, path=path))]
    toxworkdir = os.environ.get("TOX_WORK_DIR", str(REPO / ".tox"))
    found.append(str(Path(toxworkdir) / "py" / "bin" / "python"))
    return list(dict.fromkeys(found))


def main() -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("VIRTUAL_ENV", None)
    tried = []
    for python in candidates():
        if not Path(python).exists():
            tried.append(f"{python} (absent)")
            continue
        probe = subprocess.run([python, "-c", PROBE], env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            print(f"project python: {python}", flush=True)
            return subprocess.run([python, *sys.argv[1:]], env=env).returncode
        tried.append(f"{python} ({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'failed'})")
    print("no Python with the project's dependencies found; tried:\n  " + "\n  ".join(tried) +
          "\nSet BENCH_MAIN_PYTHON (e.g. the project venv's python) or run `tox -e py --notest` first.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
