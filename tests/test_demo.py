"""The README's main command (`make demo`) runs `saengine generate` on the bundled samples.
This runs the same command line, read from the Makefile, with fewer points for speed."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq

from tests.engine.jobrun import run_saengine

REPO = Path(__file__).resolve().parents[1]


def _demo_args() -> list[str]:
    makefile = (REPO / "Makefile").read_text()
    args = re.search(r"^DEMO_ARGS := (.*)$", makefile, re.MULTILINE)
    assert args, "Makefile has no DEMO_ARGS"
    assert "saengine generate $(DEMO_ARGS)" in makefile
    return args.group(1).split()


def test_demo_command_generates_masks_for_every_sample(tmp_path: Path) -> None:
    args = [
        f"input={REPO / 'samples/images'}" if a.startswith("input=") else a for a in _demo_args()
    ]
    args = [f"output={tmp_path / 'demo'}" if a.startswith("output=") else a for a in args]
    result = run_saengine("generate", *args, "images.max_short_side=600")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"saengine inspect {tmp_path / 'demo'}" in result.stdout
    rows = pq.read_table(tmp_path / "demo" / "manifest").to_pylist()
    samples = sorted((REPO / "samples" / "images").glob("*.jpg"))
    assert [Path(r["source"]).name for r in rows] == [p.name for p in samples]
    assert all(r["status"] == "ok" for r in rows)
    assert sum(r["num_masks"] for r in rows) > 0, "the demo must produce masks"
