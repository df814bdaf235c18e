"""One run at a time per directory: a lock file naming the process that holds it.

`hold_directory(dir)` creates `dir/.lock` exclusively (O_EXCL: of two processes starting together, one wins)
holding the holder's pid, host, start time and a random token, and removes it when the block ends, with the
directories it created if they stayed empty (a run that failed on its input leaves nothing behind). A lock
whose process has died on this host (a killed run) is taken over; one held by a live process, or by a process
on another host (whose liveness cannot be checked from here), is refused with `DirectoryHeldError` naming it.
Worker processes that a holder starts to share its directory inherit its token through `$BENCH_RUN_LOCK` and
are let in.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".lock"
LOCK_ENV = "BENCH_RUN_LOCK"  # the holder's token, set for the worker processes it starts


class DirectoryHeldError(RuntimeError):
    """Another live process holds the directory."""


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(directory: str | os.PathLike) -> dict | None:
    """The holder of `directory`'s lock ({"pid", "host", "started", "token"}) if it may still be running: None when
    there is no lock, or its process has died on this host. An unreadable lock file (a holder killed while writing
    it) counts as dead."""
    try:
        holder = json.loads((Path(directory) / LOCK_NAME).read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if host == socket.gethostname() and not process_alive(pid):
        return None
    return holder


def foreign_holder(directory: str | os.PathLike) -> dict | None:
    """The live holder of `directory`'s lock (`lock_holder`) unless it is the run this process works for (its token
    in `$BENCH_RUN_LOCK`)."""
    holder = lock_holder(directory)
    return None if holder is None or holder.get("token") == os.environ.get(LOCK_ENV) else holder


def describe_holder(directory: str | os.PathLike, holder: dict) -> str:
    return (f"{directory} is held by process {holder['pid']} on {holder['host']} (since {holder.get('started', '?')}); "
            f"wait for it, or stop it (if it is gone, delete {Path(directory) / LOCK_NAME})")


@contextlib.contextmanager
def hold_directory(directory: str | os.PathLike) -> Iterator[str]:
    """Hold `directory` for the block; yields the token that worker processes pass in `$BENCH_RUN_LOCK`."""
    directory = Path(directory)
    created = [d for d in (directory, *directory.parents) if not d.exists()]  # removed again if left empty
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    if (holder := foreign_holder(directory)) is not None:
        raise DirectoryHeldError(describe_holder(directory, holder))
    if (holder := lock_holder(directory)) is not None:
        yield holder["token"]  # a worker of the holder
        return
    path.unlink(missing_ok=True)  # a dead holder's lock: taken over
    token = secrets.token_hex(8)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "token": token,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another process took it between the check and here
        raise DirectoryHeldError(describe_holder(directory, lock_holder(directory) or mine)) from None
    with os.fdopen(fd, "w") as f:
        json.dump(mine, f)
    try:
        yield token
    finally:
        path.unlink(missing_ok=True)
        for made in created:  # a run that failed before writing anything leaves no directory behind
            with contextlib.suppress(OSError):
                made.rmdir()
