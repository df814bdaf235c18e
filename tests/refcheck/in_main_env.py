"""Run a script with the project's Python from inside the refcheck tox env (whose own Python has the old
stack the reference packages need, and cannot import the project).

    python tests/refcheck/in_main_env.py SCRIPT [ARGS...]      (or -m MODULE [ARGS...])

The project's Python is the first that can import `metrics.hps` and `metrics.imagereward` (with the repository
first on PYTHONPATH, so the work tree's code is what runs) among: $BENCH_MAIN_PYTHON; the default tox env
`.tox/py`; `python3`/`python` on PATH outside this env (e.g. the activated project venv). When none can, it
runs `tox -e py --notest` (the `tox` on PATH, i.e. the one running this env) to make `.tox/py`, and uses that:
so `tox -e refcheck` works on a fresh clone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = "import metrics.hps, metrics.imagereward"


def tox_python() -> Path:
    return Path(os.environ.get("TOX_WORK_DIR", str(REPO / ".tox"))) / "py" / "bin" / "python"


def candidates() -> list[str]:
    found = [os.environ["BENCH_MAIN_PYTHON"]] if os.environ.get("BENCH_MAIN_PYTHON") else []
    found.append(str(tox_python()))
    own_bin = Path(sys.executable).parent.resolve()
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != own_bin)
    found += [exe for name in ("python3", "python") if (exe := shutil.which(name, path=path))]
    return list(dict.fromkeys(found))


def works(python: str, env: dict) -> str | None:
    """None if `python` imports the project's scorers, else why not."""
    if not Path(python).exists():
        return "absent"
    probe = subprocess.run([python, "-c", PROBE], env=env, capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "failed"


def main() -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("VIRTUAL_ENV", None)
    tried = []
    for python in candidates():
        if (why := works(python, env)) is None:
            break
        tried.append(f"{python} ({why})")
    else:
        tox = shutil.which("tox")
        if tox is None:
            print("no Python with the project's dependencies found, and no tox on PATH to make one; tried:\n  " +
                  "\n  ".join(tried) + "\nSet BENCH_MAIN_PYTHON to the project venv's python.", file=sys.stderr)
            return 2
        print("no Python with the project's dependencies found; making the default tox env: tox -e py --notest",
              flush=True)
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("TOX_ENV", "TOX_PACKAGE")) and k != "VIRTUAL_ENV"}
        subprocess.run([tox, "-c", str(REPO / "tox.ini"), "-e", "py", "--notest"], env=clean, check=True)
        python = str(tox_python())
        if (why := works(python, env)) is not None:
            print(f"{python} still cannot import the project: {why}", file=sys.stderr)
            return 2
    print(f"project python: {python}", flush=True)
    return subprocess.run([python, *sys.argv[1:]], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
