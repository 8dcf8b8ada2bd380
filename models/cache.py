"""Crash-safe cache directories: build in a temporary sibling, mark complete, rename into place.

A cache entry is valid only if its `.complete` marker exists, is JSON, and records the same source
the registry asks for now. The marker is written last, inside the temporary directory, and the
directory is renamed into place in one step, so an interrupted build (Ctrl-C, full disk, killed
process) is never mistaken for a finished one: the next run sees no marker and rebuilds. Changing a
pin in `registry.yaml` changes the expected source and so rebuilds too.

Several processes may ask for the same model at once (the CLI, the cloud server, the evaluator), so
a build runs under an exclusive lock file (`locked`); whoever gets the lock second re-checks the
marker and normally finds the work done.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MARKER = ".complete"


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of a cache directory, or None when it is missing or unreadable."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_complete(path: Path, expect: Mapping[str, Any]) -> bool:
    """True when `path` has a marker whose entries include all of `expect`."""
    marker = read_marker(path)
    return marker is not None and all(marker.get(k) == v for k, v in expect.items())


def publish_dir(target: Path, build: Callable[[Path], Mapping[str, Any] | None], marker: Mapping[str, Any]) -> Path:
    """Run `build(tmp)` in a fresh sibling of `target`, write the marker, and rename it to `target`.

    `build` may return extra marker fields (hashes it computed). An older `target` is replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        extra = build(tmp) or {}
        record = {**marker, **extra, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / MARKER).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def locked(lock_file: Path, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (blocking; `on_wait` is called once if it must wait)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+b") as handle:
        if not _try_lock(handle, blocking=False):
            on_wait()
            _try_lock(handle, blocking=True)
        try:
            yield
        finally:
            _unlock(handle)


if os.name == "posix":
    import fcntl

    def _try_lock(handle, *, blocking: bool) -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def _unlock(handle) -> None:
        fcntl.flock(handle, fcntl.LOCK_UN)

else:
    import msvcrt

    def _try_lock(handle, *, blocking: bool) -> bool:
        handle.seek(0)
        while True:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not blocking:
                    return False
                time.sleep(1.0)

    def _unlock(handle) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


def _replace_dir(src: Path, target: Path) -> None:
    """Rename `src` to `target`; an existing `target` (invalid or outdated) is moved aside first."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(src, target)


def _remove_stale_builds(target: Path) -> None:
    """Delete temporary siblings left by builds whose process is gone (killed, crashed)."""
    for stale in target.parent.glob(f".{target.name}.*-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
