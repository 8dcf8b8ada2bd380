"""Render a real chat session (real models, embedded cloud) headless and save docs/chat.png.

    python docs/screenshot.py [question]

Runs the Textual app under Pilot at 120x40, asks one question with the entropy controller so the
cloud writes some spans, opens the "why" strip (F4), saves Textual's SVG screenshot, and converts
it to PNG with cairosvg.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.app import open_engine  # noqa: E402
from edge.config import EdgeConfig  # noqa: E402
from edge.relay.settings import RelaySettings  # noqa: E402
from edge.ui.app import ChatApp  # noqa: E402

QUESTION = (
    "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many apples are left? "
    "Show the arithmetic in math notation."
)


async def session(engine, question: str, svg: Path) -> None:
    settings = RelaySettings(policy="entropy", entropy_tau=0.6, fixed_n=12, max_relays=3, max_new_tokens=220)
    app = ChatApp(engine, settings=settings, history_path=Path(tempfile.mkdtemp()) / "history.db")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        for key in question:
            await pilot.press(key if key != " " else "space")
        await pilot.press("enter")
        while app.workers and any(w.is_running for w in app.workers):
            await asyncio.sleep(0.5)
        await pilot.press("f4")  # the "why" strip under the answer
        app.query_one("#prompt").cursor_blink = False
        await pilot.pause(1.0)
        app.save_screenshot(filename=svg.name, path=str(svg.parent))


def main() -> int:
    question = sys.argv[1] if len(sys.argv) > 1 else QUESTION
    svg = ROOT / "docs" / "chat.svg"
    with open_engine(EdgeConfig(), say=print) as engine:
        asyncio.run(session(engine, question, svg))
    import cairosvg

    png = svg.with_suffix(".png")
    cairosvg.svg2png(url=str(svg), write_to=str(png), output_width=1400)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
