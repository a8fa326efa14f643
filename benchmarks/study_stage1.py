"""Stage 1 over several retraining rounds on synthetic scenes: how the model in the loop
changes the annotators' work (the paper: time per mask 34 s -> 14 s, masks per image
20 -> 44 over 6 rounds).

    python -m benchmarks.study_stage1 [--images 96] [--batches 4] [--steps 150]
        [--start bundled|weak] [--keep <dir>]

A campaign is created on `--images` synthetic scenes; scripted annotators (2 at a time)
work through it in `--batches` batches, and after each batch a retraining round runs on
everything collected (held-out: a separate synthetic split; the round's model is used
from then on only if it beats its parent there). `--start weak` begins from a model trained
for a few steps only (made here), so that rounds have something to teach. Prints the
campaign's statistics per model version and each round's held-out metrics.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import machine
from engine.campaigns.campaign import Campaign
from engine.campaigns.serve import saengine_command
from engine.campaigns.stats import campaign_stats, format_stats
from engine.training.synthetic import write_synthetic_dataset
from engine.training.trainer import TrainConfig, train_in_process


def _run(*args: str) -> str:
    done = subprocess.run([*saengine_command(), *args], check=True, capture_output=True, text=True)
    return done.stdout


def _weak_model(root: Path) -> Path:
    """vit_mini after 30 steps from random weights: a model that segments a little."""
    data = root / "weak-data"
    write_synthetic_dataset(str(data), num_images=64, split="train", seed=7)
    config = TrainConfig(
        data=(str(data),),
        output=str(root / "weak"),
        steps=30,
        batch_size=4,
        masks_per_image=8,
        num_iterations=5,
        warmup_steps=5,
        decay_at=(1.0,),
    )
    train_in_process(config)
    return root / "weak" / "model.pth"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--start", choices=("bundled", "weak"), default="bundled")
    parser.add_argument("--keep", type=Path, default=None, help="keep the campaign here")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as folder:
        root = args.keep or Path(folder)
        scenes, held_out = root / "scenes", root / "held-out"
        write_synthetic_dataset(str(scenes), num_images=args.images, split="test", seed=3)
        write_synthetic_dataset(str(held_out), num_images=24, split="val", seed=3)
        checkpoint = "bundled" if args.start == "bundled" else str(_weak_model(root))
        camp = root / "campaign"
        _run(
            "campaign",
            "create",
            str(camp),
            f"input={scenes}",
            "model=bundled",
            f"model.checkpoint={checkpoint}",
            "onnx.quantize=false",
            "progress=false",
            f"rounds.eval_data=[{held_out}]",
            f"rounds.train.steps={args.steps}",
            "rounds.train.batch_size=4",
            "rounds.train.masks_per_image=8",
            f"rounds.train.warmup_steps={max(1, args.steps // 10)}",
            "rounds.eval.max_images=24",
        )
        _run("campaign", "embed", str(camp), "progress=false")
        per_batch = args.images // args.batches
        for batch in range(args.batches):
            _run(
                "campaign",
                "simulate",
                str(camp),
                f"truth={scenes}",
                "annotators=2",
                f"max_images={per_batch}",
                f"seed={batch}",
            )
            if batch < args.batches - 1:
                print(_run("campaign", "round", str(camp)).strip(), flush=True)
                _run("campaign", "embed", str(camp), "progress=false")
        campaign = Campaign(camp)
        stats = campaign_stats(campaign)
        print(format_stats(stats))
        with campaign.db.read() as db:
            for row in db.execute("SELECT name, promoted, detail FROM rounds ORDER BY round_id"):
                metrics = json.loads(row["detail"]).get("metrics", {})
                print(
                    f"{row['name']}: promoted={bool(row['promoted'])}, held-out 1-point mIoU "
                    f"{metrics.get('point_miou', float('nan')):.3f}, 5-click mIoU "
                    f"{(metrics.get('click_miou') or [0] * 5)[4]:.3f}"
                )


if __name__ == "__main__":
    main()
