"""Grading an answer against the gold answer with math-verify, as the paper's released code does.

Rule (DATA.md, METHOD.md §4): gold = `parse("$" + answer + "$")`; the prediction is the content of
the *last* `\\boxed{}` of the response (parsed the same way); when nothing is boxed, the line after
a GSM8K-style `#### ` marker, else the whole response; `verify(gold, pred)` with the gold first
(argument order matters for sets and intervals).
Relay commands (`<call>N</call>`) are deleted from the response first: they are control text, not
part of the answer.

math-verify time-boxes parsing with `signal.alarm`, which raises outside the main thread. So the
timeouts are used in the main thread only; in any other thread they are switched off
(`parsing_timeout=None`, `timeout_seconds=None`). Exceptions are *not* swallowed here: the harness
records a grader that raises as an error row, so a broken grader can never pass as "wrong".
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

_COMMAND_RE = re.compile(r"<call>\s*\d+\s*</call>")
TIMEOUT_S = 5
"""Parse/verify time limit per answer (main thread only)."""


@dataclass(frozen=True)
class Grade:
    correct: bool
    pred: str
    """The text that was graded: the last boxed content, the `####` answer, or the whole response."""


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if there is none.

    >>> last_boxed(r"so \\boxed{1} no, \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> last_boxed("no box") is None
    True
    """
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    start = text.find("{", idx)
    if start < 0:
        return None
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : j]
    return None


def gsm8k_final_answer(solution: str) -> str:
    """The number after `####` in a GSM8K reference solution, thousands separators removed.

    >>> gsm8k_final_answer("She makes 9 * 2 = $<<9*2=18>>18.\\n#### 1,018")
    '1018'
    """
    return solution.split("####")[-1].strip().replace(",", "")


def strip_commands(text: str) -> str:
    """Delete complete `<call>N</call>` commands from a response."""
    return _COMMAND_RE.sub("", text)


def extract_prediction(response: str) -> tuple[str, bool]:
    """What gets graded, and whether it is LaTeX from a box (parsed as `$...$`) or plain text.

    >>> extract_prediction("so 9 * 2 = 18 dollars.\\n#### 18")
    ('18', False)
    """
    text = strip_commands(response)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed, True
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        if tail:
            return tail[0].strip(), False
    return text, False


def grade(response: str, gold: str) -> Grade:
    """Grade one response against a gold answer (LaTeX or a plain number).

    >>> grade(r"Half of it: \\boxed{0.5}", r"\\frac{1}{2}").correct
    True
    """
    from math_verify import parse, verify  # imported here: sympy takes a second to import

    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    pred_text, latex = extract_prediction(response)
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    pred_parsed = parse(f"${pred_text}$" if latex else pred_text, parsing_timeout=timeout)
    if not gold_parsed:
        raise ValueError(f"gold answer does not parse: {gold!r}")
    return Grade(verify(gold_parsed, pred_parsed, timeout_seconds=timeout), pred_text)
