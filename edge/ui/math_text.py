"""LaTeX math in an answer, rewritten as readable Unicode for a terminal (display only).

Math models write `\\(\\frac{3}{4}\\)`, `\\[ 3 \\times 12 = 36 \\]`, `$x^2$` and a final `\\boxed{16}`.
Markdown eats the backslashes (`\\[` is an escaped `[`), so the chat app converts each closed math
region with pylatexenc before the markdown is parsed: `3 × 12 = 36`, `¾`, `√(x+1)`, `x²`, Greek.
Display math goes on its own indented line (a markdown quote block) and `\\boxed{…}` is wrapped
in the box sentinels that the renderer highlights. The raw text stays what the models wrote
(history, export, `relay ask`).

Provenance sentinels (`edge.ui.render`) may sit inside a math region, where a relay split it; the
LLM open/close characters pass through pylatexenc as plain characters, and relay markers are
swapped for placeholders first so their text is never read as LaTeX. Code (fenced or inline) is
left alone, and so is anything that does not parse: an unclosed `\\(` while the answer streams, or
broken LaTeX, shows as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pylatexenc import latex2text, latexwalker, macrospec

BOX_OPEN, BOX_CLOSE = "\ue004", "\ue005"
"""Around a `\\boxed{…}` answer; the renderer highlights what lies between."""
_MARK_RE = re.compile("\ue002[^\ue003]*\ue003")
_PLACEHOLDER_BASE = 0xF0000  # supplementary private use: never in model text nor in our sentinels

_VULGAR = {
    ("1", "2"): "½", ("1", "3"): "⅓", ("2", "3"): "⅔", ("1", "4"): "¼", ("3", "4"): "¾",
    ("1", "5"): "⅕", ("2", "5"): "⅖", ("3", "5"): "⅗", ("4", "5"): "⅘", ("1", "6"): "⅙",
    ("5", "6"): "⅚", ("1", "8"): "⅛", ("3", "8"): "⅜", ("5", "8"): "⅝", ("7", "8"): "⅞",
}  # fmt: skip
_SUPERSCRIPT = str.maketrans("0123456789+-=()n", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿ")
_SUBSCRIPT = str.maketrans("0123456789+-=()", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎")
_SIMPLE_OPERAND = re.compile(r"[\w.\u00b2-\u00b3\u00b9\u2070-\u209f√\ue000\ue001]+")

# Math regions, outermost first: $$…$$, \[…\], \(…\), then $…$ (not `$5 and $6`: no space inside
# the dollars and no digit right after the closing one).
_REGION_RE = re.compile(
    r"\$\$(?P<dd>.+?)\$\$"
    r"|\\\[(?P<bracket>.+?)\\\]"
    r"|\\\((?P<paren>.+?)\\\)"
    r"|(?<![\\$\w])\$(?P<dollar>[^\s$](?:[^$\n]*?[^\s$\\])?)\$(?!\d)",
    re.S,
)
_LONE_SENTINELS_RE = re.compile(r"(\n+)([\ue000-\ue005]+)(?=\n|\Z)")
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_CODE_RE = re.compile(r"(^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*\2[ \t]*$|\Z)|`[^`\n]+`)", re.S | re.M)


def _arg_text(node: latexwalker.LatexNode | None, l2tobj: latex2text.LatexNodes2Text) -> str:
    return l2tobj.nodelist_to_text([node]).strip() if node is not None else ""


def _args(n: latexwalker.LatexMacroNode) -> list[latexwalker.LatexNode | None]:
    return list(n.nodeargd.argnlist) if n.nodeargd is not None else []


def _grouped(text: str) -> str:
    return text if _SIMPLE_OPERAND.fullmatch(text) else f"({text})"


def _frac(n: latexwalker.LatexMacroNode, l2tobj: latex2text.LatexNodes2Text) -> str:
    num, den = (_arg_text(a, l2tobj) for a in _args(n)[-2:])
    return _VULGAR.get((num, den)) or f"{_grouped(num)}/{_grouped(den)}"


def _sqrt(n: latexwalker.LatexMacroNode, l2tobj: latex2text.LatexNodes2Text) -> str:
    index, body = (_arg_text(a, l2tobj) for a in _args(n)[-2:])
    root = {"3": "∛", "4": "∜"}.get(index, f"{index.translate(_SUPERSCRIPT)}√" if index else "√")
    return root + _grouped(body)


def _script(table: dict[int, int], marker: str) -> Callable:
    def repl(n: latexwalker.LatexSpecialsNode, l2tobj: latex2text.LatexNodes2Text) -> str:
        body = _arg_text(_args(n)[0] if _args(n) else None, l2tobj)
        mapped = body.translate(table)
        if body and all(ch != orig for ch, orig in zip(mapped, body, strict=True) if not ch.isspace()):
            return mapped
        return f"{marker}{_grouped(body)}"

    return repl


def _boxed(n: latexwalker.LatexMacroNode, l2tobj: latex2text.LatexNodes2Text) -> str:
    return f"{BOX_OPEN}{_arg_text(_args(n)[-1], l2tobj)}{BOX_CLOSE}"


def _build_converter() -> tuple[latexwalker.LatexContextDb, latex2text.LatexNodes2Text]:
    parse_db = latexwalker.get_default_latex_context_db()
    parse_db.add_context_category(
        "relay-math",
        prepend=True,
        macros=[macrospec.std_macro(name, False, 2) for name in ("dfrac", "tfrac", "cfrac")]
        + [macrospec.std_macro("boxed", False, 1), macrospec.std_macro("sqrt", "[{")],
        specials=[macrospec.std_specials("^"), macrospec.std_specials("_")],
    )
    for char in "^_":  # a script takes one argument: `x^2`, `x^{10}`
        parse_db.d["relay-math"]["specials"][char] = macrospec.SpecialsSpec(
            char, args_parser=macrospec.MacroStandardArgsParser("{")
        )
    text_db = latex2text.get_default_latex_context_db()
    binary = {"times": "×", "cdot": "·", "div": "÷", "pm": "±", "mp": "∓", "le": "≤", "leq": "≤",
              "ge": "≥", "geq": "≥", "neq": "≠", "ne": "≠", "approx": "≈", "equiv": "≡", "to": "→",
              "rightarrow": "→", "Rightarrow": "⇒", "implies": "⇒"}  # fmt: skip
    text_db.add_context_category(
        "relay-math",
        prepend=True,
        macros=[latex2text.MacroTextSpec(name, f" {sym} ") for name, sym in binary.items()]
        + [latex2text.MacroTextSpec(name, simplify_repl=_frac) for name in ("frac", "dfrac", "tfrac", "cfrac")]
        + [
            latex2text.MacroTextSpec("sqrt", simplify_repl=_sqrt),
            latex2text.MacroTextSpec("boxed", simplify_repl=_boxed),
            latex2text.MacroTextSpec("left", ""),
            latex2text.MacroTextSpec("right", ""),
            latex2text.MacroTextSpec("circ", "°"),
            latex2text.MacroTextSpec("%", "%"),
            latex2text.MacroTextSpec("$", "$"),
        ],
        specials=[
            latex2text.SpecialsTextSpec("^", simplify_repl=_script(_SUPERSCRIPT, "^")),
            latex2text.SpecialsTextSpec("_", simplify_repl=_script(_SUBSCRIPT, "_")),
        ],
    )
    return parse_db, latex2text.LatexNodes2Text(latex_context=text_db, math_mode="text", strict_latex_spaces=False)


class MathText:
    """Converts the math in a markdown source (with provenance sentinels) to Unicode; built once."""

    def __init__(self) -> None:
        self._parse_db, self._l2t = _build_converter()
        self._done: dict[str, str] = {}  # a streaming answer is converted again on every redraw

    def latex(self, tex: str) -> str:
        """One math expression as Unicode; the input unchanged where it does not parse."""
        if tex not in self._done:
            if len(self._done) > 4096:
                self._done.clear()
            self._done[tex] = self._latex(tex)
        return self._done[tex]

    def _latex(self, tex: str) -> str:
        try:
            nodes, _, _ = latexwalker.LatexWalker(
                tex, latex_context=self._parse_db, tolerant_parsing=False
            ).get_latex_nodes()
            text = self._l2t.nodelist_to_text(nodes)
        except (latexwalker.LatexWalkerError, IndexError, ValueError, TypeError, AttributeError):
            return tex
        return re.sub(r"[ \t]{2,}", " ", text).strip()

    def convert(self, source: str) -> str:
        """`source` with every closed math region and `\\boxed{…}` rewritten; code left as is."""
        out, last = [], 0
        for code in _CODE_RE.finditer(source):
            out += [self._convert_prose(source[last : code.start()]), code.group(0)]
            last = code.end()
        out.append(self._convert_prose(source[last:]))
        # A span that ended right after display math leaves its sentinel alone on a line, which
        # would render as an empty paragraph: move it to the end of the line before.
        return _LONE_SENTINELS_RE.sub(r"\2\1", "".join(out))

    def _convert_prose(self, text: str) -> str:
        markers: list[str] = []

        def hide(m: re.Match[str]) -> str:
            markers.append(m.group(0))
            return chr(_PLACEHOLDER_BASE + len(markers) - 1)

        hidden = _MARK_RE.sub(hide, text)
        converted = _REGION_RE.sub(self._region, hidden)
        converted = self._boxed_outside_math(converted)
        for i, marker in enumerate(markers):
            converted = converted.replace(chr(_PLACEHOLDER_BASE + i), marker)
        return converted

    def _region(self, m: re.Match[str]) -> str:
        display = m.group("dd") is not None or m.group("bracket") is not None
        tex = next(g for g in m.groups() if g is not None)
        text = _escape_markdown(self.latex(tex))
        if text == _escape_markdown(tex.strip()) and "\\" in tex:  # did not parse: as written
            return m.group(0)
        return f"\n\n> {text}\n\n" if display else text  # a quote block: its own, indented line

    def _boxed_outside_math(self, text: str) -> str:
        """`\\boxed{…}` written in prose (outside any math delimiters), braces balanced."""
        out, i = [], 0
        for m in _BOXED_RE.finditer(text):
            if m.start() < i:
                continue
            end = _matching_brace(text, m.end() - 1)
            if end < 0:
                continue
            out += [text[i : m.start()], _escape_markdown(self.latex(text[m.start() : end + 1]))]
            i = end + 1
        out.append(text[i:])
        return "".join(out)


def _matching_brace(text: str, open_at: int) -> int:
    depth = 0
    for j in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j
    return -1


def _escape_markdown(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>|~#])", r"\\\1", text)
