"""A tiny evaluation run through the real path: `relay eval run` -> open_engine -> ONNX SLM ->
gRPC -> torch LLM, on tiny models and a two-problem GSM8K file."""

from __future__ import annotations

import json
from pathlib import Path

from relaycli.main import main

PROBLEMS = [
    {"id": 0, "question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5", "final_answer": "5"},
    {"id": 1, "question": "What is 10 - 4?", "answer": "10 - 4 = 6\n#### 6", "final_answer": "6"},
]


def test_eval_run_end_to_end(server, tiny_onnx: Path, tmp_path: Path) -> None:
    data = tmp_path / "cache" / "data"
    data.mkdir(parents=True)
    (data / "gsm8k_test.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    out = tmp_path / "run"
    code = main(
        [
            "eval", "run", "--benchmark", "gsm8k", "--slice", "all", "--limit", "2",
            "--policies", "never,cloud-only,entropy@0.5", "--out", str(out), "--no-progress",
            "--cache", str(tmp_path / "cache"), "--max-new-tokens", "8",
            "--set", f"cloud.address={server.address}", "--set", f"models.slm_onnx_dir={tiny_onnx}",
        ]
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and not [r for r in rows if r.get("error")]
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "pareto.png").stat().st_size > 1000
    text = json.dumps(summary)
    assert "cloud-only" in text and "never" in text
    cloud_only = [r for r in rows if r["policy"] == "cloud-only"]
    assert all(r["cost"]["llm_share"] == 1.0 for r in cloud_only)
