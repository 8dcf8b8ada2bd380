"""LaTeX -> terminal Unicode for the chat view, on snippets taken from real answers of the bundled
models (runs/eval, GSM8K dev). The raw text is never changed: only the display."""

from __future__ import annotations

import pytest

from edge.ui.math_text import BOX_CLOSE, BOX_OPEN, MathText
from edge.ui.render import LLM_CLOSE, LLM_OPEN, MARK_CLOSE, MARK_OPEN

CASES = [
    (r"\(50 \times 35 \times 15\)", "50 × 35 × 15"),
    ("\\[\n     35 \\times 15 = 525\n     \\]", "\n\n> 35 × 15 = 525\n\n"),
    (r"\[ 20 \text{ miles} - 15 \text{ miles} = 5 \text{ miles} \]", "\n\n> 20 miles - 15 miles = 5 miles\n\n"),
    (r"\(\frac{1}{3}\)", "⅓"),
    (r"\(\frac{8000}{5} = 1600\)", "8000/5 = 1600"),
    (r"\(\frac{42 \text{ miles}}{3 \text{ miles/segment}}\)", "(42 miles)/(3 miles/segment)"),
    (r"\(45 \text{ eggs} \div 3\)", "45 eggs ÷ 3"),
    (r"\(30\% \text{ of } 30\)", "30% of 30"),
    (r"\(5\% \times \$350,000 = \$175,000\)", "5% × $350,000 = $175,000"),
    (r"\(\boxed{26250}\)", f"{BOX_OPEN}26250{BOX_CLOSE}"),
    (r"\(\sqrt{x+1} + \sqrt[3]{8}\)", "√(x+1) + ∛8"),
    (r"$x^2 + y^{10} - a_1$", "x² + y¹⁰ - a₁"),
    (r"\(\alpha \le \beta \neq \pi\)", "α ≤ β ≠ π"),
    (r"\(\left( \frac{a}{b} \right)\)", "( a/b )"),
    (r"\(\dfrac{3}{4}\) and \(\tfrac{1}{2}\)", "¾ and ½"),
]


@pytest.fixture(scope="module")
def math() -> MathText:
    return MathText()


@pytest.mark.parametrize(("tex", "shown"), CASES)
def test_real_answer_snippets(math: MathText, tex: str, shown: str) -> None:
    assert math.convert(tex) == shown


def test_boxed_in_prose_with_nested_braces(math: MathText) -> None:
    assert math.convert(r"So the answer is \boxed{\frac{1}{2}}.") == f"So the answer is {BOX_OPEN}½{BOX_CLOSE}."
    assert math.convert(r"\boxed{\text{(A)}}") == f"{BOX_OPEN}(A){BOX_CLOSE}"


@pytest.mark.parametrize(
    "text",
    [
        r"broken \(\frac{1}{\) here",  # a brace never closed
        r"still streaming \(3 \times",  # no closing delimiter yet
        "it costs $5 and $6 later",  # money, not math
        "a `\\(x\\)` code span and\n```\n\\frac{1}{2}\n```\n",  # code is left alone
    ],
)
def test_left_as_written(math: MathText, text: str) -> None:
    assert math.convert(text) == text


def test_provenance_sentinels_and_markers_survive(math: MathText) -> None:
    split = f"\\(\\frac{{3}}{{{LLM_OPEN}4}}{LLM_CLOSE}\\)"  # a relay split the fraction
    assert math.convert(split) == f"3/{LLM_OPEN}4{LLM_CLOSE}"
    marker = f"{MARK_OPEN}⟨cloud N=4 got 4 · 412 ms⟩{MARK_CLOSE}"
    assert math.convert(f"\\(3 {marker} \\times 4\\)") == f"3 {marker} × 4", "marker text is never read as LaTeX"


def test_markdown_special_characters_in_math_are_escaped(math: MathText) -> None:
    assert math.convert(r"\(a * b_{x}\)") == r"a \* b\_x"  # no Unicode subscript x: `_x`, escaped
