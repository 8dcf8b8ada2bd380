"""First-run progress: one line per step, and everything libraries print (Python warnings, logging,
C-level writes to fd 1/2) in the log file instead of on the terminal."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.steps import Steps, size_of

ROOT = Path(__file__).resolve().parents[2]


NOISY_SETUP = """
import logging, os, sys, warnings
from pathlib import Path
from common.steps import Steps

logging.basicConfig()  # a handler bound to the real stderr, as libraries set up
steps = Steps.to_log(Path(sys.argv[1]))
with steps.step("export tiny → ONNX int8") as step:
    warnings.warn("TracerWarning: converting a tensor to a Python boolean")
    logging.getLogger("optimum.exporters").warning("opset 14 chosen")
    os.write(1, b"C++ stdout chatter\\n")
    os.write(2, b"C++ stderr chatter\\n")
    print("a print()")
    step.detail = "12.0 MB"
steps.finish()
print("after the steps")
"""


def test_library_output_goes_to_the_log_and_steps_print_one_line(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "setup.log"
    run = subprocess.run(
        [sys.executable, "-c", NOISY_SETUP, str(log)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0].startswith("✓ export tiny → ONNX int8 · 12.0 MB · ") and lines[0].endswith(" s"), lines
    assert lines[1:] == [f"library messages: {log}"]
    assert run.stdout == "after the steps\n", "stdout is the terminal again after the step"
    text = log.read_text()
    for chatter in ("TracerWarning", "opset 14 chosen", "C++ stdout chatter", "C++ stderr chatter", "a print()"):
        assert chatter in text


def test_a_failed_step_says_so_and_restores_the_terminal(tmp_path: Path, capfd) -> None:  # type: ignore[no-untyped-def]
    terminal = io.StringIO()
    steps = Steps(tmp_path / "setup.log", terminal)
    (tmp_path / "setup.log").write_text("")
    with pytest.raises(RuntimeError), steps.step("convert broken"):
        raise RuntimeError("bad gguf")
    assert terminal.getvalue().startswith("✗ convert broken · failed after ")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n", "fd 2 is the terminal again"


def test_quiet_steps_without_log_name_nothing(tmp_path: Path) -> None:
    terminal = io.StringIO()
    steps = Steps(tmp_path / "setup.log", terminal)
    (tmp_path / "setup.log").write_text("")
    with steps.step("verify"):
        pass
    steps.finish()
    assert "library messages" not in terminal.getvalue()


def test_without_a_log_steps_print_plainly(capfd) -> None:  # type: ignore[no-untyped-def]
    terminal = io.StringIO()
    with Steps(None, terminal).step("fetch"):
        os.write(2, b"visible\n")
    assert capfd.readouterr().err == "visible\n"
    assert terminal.getvalue().splitlines()[0] == "… fetch"


def test_size_of_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"x" * 1500)
    (tmp_path / "b.bin").write_bytes(b"x" * 600)
    assert size_of(tmp_path / "a", tmp_path / "b.bin") == "2.1 kB"
