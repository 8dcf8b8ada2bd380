"""Per policy of an evaluation run: answers holding command look-alikes (`< call>4</call>`), how
many look-alikes, and how many of those answers were right.

    python evaluation/scripts/count_lookalikes.py runs/eval/gsm8k-test-100-relay
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge.relay.commands import count_near_misses  # noqa: E402
from evaluation.harness import ROWS_FILE, read_rows  # noqa: E402


def main(run_dir: Path) -> None:
    if not (run_dir / ROWS_FILE).is_file():
        sys.exit(f"error: {run_dir} holds no {ROWS_FILE} (not an evaluation run directory)")
    by_policy: dict[str, list[dict]] = defaultdict(list)
    for row in read_rows(run_dir / ROWS_FILE).values():
        by_policy[row["policy"]].append(row)
    for policy, rows in by_policy.items():
        hit = [r for r in rows if count_near_misses(r["text"])]
        total = sum(count_near_misses(r["text"]) for r in hit)
        right = sum(bool(r["correct"]) for r in hit)
        print(f"{policy}: {len(hit)} of {len(rows)} answers hold {total} look-alikes; {right} of those right")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="an evaluation run directory (relay eval run --out)")
    main(parser.parse_args().run_dir)
