"""The real chat app in a real terminal (tmux), on the real small models with the embedded cloud:
type a question, wait for the answer, read the screen."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[2]
SESSION = "relay-chat-test"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def screen() -> str:
    return tmux("capture-pane", "-p", "-t", SESSION)


def wait_for(predicate, timeout_s: float, what: str) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = screen()
        if predicate(text):
            return text
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; screen:\n{screen()}")


def wait_stable(timeout_s: float, quiet_s: float = 4.0) -> str:
    """The screen once it stopped changing for `quiet_s` (the answer finished)."""
    deadline = time.monotonic() + timeout_s
    last, since = screen(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = screen()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    return last


@contextmanager
def chat_app(tmp_path: Path, *flags: str) -> Iterator[Path]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (.ci/run installs it)")
    command = (
        f"cd {ROOT} && {sys.executable} -m relaycli.main chat --history {tmp_path / 'history.db'} "
        + " ".join(flags)  # stderr stays on the terminal: Textual draws the UI there
    )
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    tmux("new-session", "-d", "-s", SESSION, "-x", "140", "-y", "45", command)
    try:
        yield tmp_path
    finally:
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)


def test_chat_streams_a_relayed_answer_with_cost(tmp_path: Path) -> None:
    flags = ("--policy entropy --set relay.entropy_tau=0.9 --set relay.fixed_n=6 --set relay.max_relays=2 "
             "--set relay.max_new_tokens=48")  # fmt: skip
    with chat_app(tmp_path, flags) as chat:
        wait_for(lambda s: "cloud: embedded" in s, 600, "the app with the embedded cloud")  # the header
        tmux("send-keys", "-t", SESSION, "Tom has 3 boxes with 4 apples each. How many apples?", "Enter")
        done = lambda s: s.count("got 6") == 2 and "stopped" in s  # noqa: E731  (both relays, then the token limit)
        text = wait_for(done, 600, "two finished relays and the end of the answer")
        assert "⟨cloud N=6" in text and "LLM 25.0%" in text  # 12 of 48 answer tokens came from the cloud
        assert "embedded" in text  # the cloud link's state
        assert (chat / "history.db").is_file()


def test_chat_shows_the_models_latex_as_unicode(tmp_path: Path) -> None:
    """The SLM alone answers with `\\(7 \\times 8\\)` here (greedy); the screen shows 7 × 8."""
    with chat_app(tmp_path, "--cloud off --policy never --set relay.max_new_tokens=40"):
        wait_for(lambda s: "cloud: offline" in s, 300, "the app")
        tmux("send-keys", "-t", SESSION, "What is 7 multiplied by 8? Use math notation.", "Enter")
        wait_for(lambda s: "7 × 8" in s, 300, "the answer's math rendered")
        text = wait_stable(60)
        assert "×" in text and "\\times" not in text and "\\(" not in text
