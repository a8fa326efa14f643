"""The data engine's loop on a CPU: rounds that cut the annotators' clicks per mask.

    python -m benchmarks.bench_loop [--rounds 4] [--masks-per-round 60] [--steps 60]
        [--kind decoder|full] [--images 120] [--plot loop.png] [--keep <dir>]

A stage-1 campaign on scenes of a family the starting model (the bundled one, trained on the
`shapes` family) has not seen: `saengine synth family=clutter` (stars, rings, crescents and
blobs with other textures over a cluttered background). The campaign's server runs with its
embed job and its rounds (`retrain_every` = --masks-per-round accepted masks, `rounds.kind`
= --kind); scripted annotators (two at a time, the default `AnnotatorPolicy`) work on it
through its HTTP API in small batches until that many masks are new, then wait while the
round the server triggered trains on every mask so far, is evaluated on held-out scenes
(another split) and, if it beats its parent there, becomes the campaign's model. Round r's
figures are those of the images annotated after round r and before round r + 1, with the
model current then: none of them was trained on. Per round: clicks per mask, median seconds
per mask (the annotator model's clock), masks per image and the held-out 1-click mIoU of
the model in use. Writes the campaign's stats.png (per model version) and the loop plot
(--plot); the last output line is JSON: {"rounds", "clicks_per_mask", "seconds_per_mask",
"masks_per_image", "point_miou", "promoted", "minutes"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import machine
from engine.campaigns.campaign import Campaign
from engine.campaigns.masks import count_accepted_after, last_mask_id
from engine.campaigns.rounds import round_counts
from engine.campaigns.serve import saengine_command
from engine.campaigns.server_process import start_server
from engine.campaigns.simulate import simulate
from engine.campaigns.stats import STATS_PLOT, campaign_stats, format_stats, plot_stats
from engine.campaigns.versions import current_model
from engine.training.synthetic import SceneOptions, write_synthetic_dataset
from stages.assisted.annotator import AnnotatorPolicy

UNSEEN = SceneOptions(family="clutter")
HELD_OUT_IMAGES = 12
POLL_S = 1.0


@dataclass
class Segment:
    """The images annotated between two rounds (finished in [started, ended])."""

    started: float
    ended: float
    model: str


def _saengine(*args: str) -> str:
    done = subprocess.run([*saengine_command(), *args], check=True, capture_output=True, text=True)
    return done.stdout


def create_campaign(folder: Path, scenes: Path, held_out: Path, args: argparse.Namespace) -> None:
    _saengine(
        "campaign",
        "create",
        str(folder),
        f"input={scenes}",
        "model=bundled",
        "onnx.quantize=false",
        "progress=false",
        "ray.num_cpus=2",
        "embed.ahead=16",
        f"retrain_every={args.masks_per_round}",
        f"rounds.kind={args.kind}",
        f"rounds.eval_data=[{held_out}]",
        f"rounds.train.steps={args.steps}",
        "rounds.train.batch_size=4",
        "rounds.train.masks_per_image=8",
        f"rounds.train.num_iterations={args.iterations}",
        f"rounds.train.lr={args.lr}",
        f"rounds.train.warmup_steps={max(1, args.steps // 10)}",
        "rounds.train.decay_at=[0.8]",
        f"rounds.eval.max_images={HELD_OUT_IMAGES}",
        "rounds.eval.max_masks=6",
        "rounds.eval.points_per_side=4",
    )


def annotate(
    campaign: Campaign, url: str, truth: Path, masks: int, seed: int, policy: AnnotatorPolicy
) -> Segment:
    """Scripted annotators, two images at a time, until `masks` accepted masks are new."""
    with campaign.db.read() as db:
        first, model = last_mask_id(db), str(current_model(db))
    started, batch = time.time(), 0
    while True:
        with campaign.db.read() as db:
            if count_accepted_after(db, first) >= masks:
                break
        reports = simulate(
            campaign,
            url=url,
            truth=[str(truth)],
            annotators=2,
            policy=policy,
            seed=seed * 1000 + batch,
            max_images=2,
        )
        batch += 1
        if not any(report.images for report in reports):
            raise SystemExit("the campaign ran out of images: give it more (--images)")
    return Segment(started, time.time(), model)


def wait_for_round(campaign: Campaign, number: int) -> None:
    """Until the server's round `number` (triggered by retrain_every) has ended, then until
    the current model has embeddings of the next queued images."""
    while True:
        with campaign.db.read() as db:
            counts = round_counts(db)
        if counts.get("failed"):
            with campaign.db.read() as db:
                row = db.execute("SELECT detail FROM rounds WHERE status = 'failed'").fetchone()
            raise SystemExit(f"round failed: {row['detail']}")
        if counts.get("done", 0) >= number:
            break
        time.sleep(POLL_S)
    while not _next_images_embedded(campaign):
        time.sleep(POLL_S)


def _next_images_embedded(campaign: Campaign, count: int = 4) -> bool:
    with campaign.db.read() as db:
        sha = current_model(db)
        queued = db.execute("SELECT COUNT(*) FROM images WHERE status = 'queued'").fetchone()[0]
        ready = db.execute(
            "SELECT COUNT(*) FROM images i JOIN embeddings e ON e.image_id = i.image_id "
            "WHERE i.status = 'queued' AND e.model_sha256 = ?",
            (sha,),
        ).fetchone()[0]
    return bool(ready >= min(count, queued))


def segment_figures(campaign: Campaign, segment: Segment) -> dict[str, Any]:
    """Clicks per mask, median seconds per mask and masks per image of the images finished
    in the segment."""
    with campaign.db.read() as db:
        images = [
            row[0]
            for row in db.execute(
                "SELECT image_id FROM images WHERE status = 'done' AND finished_at >= ? "
                "AND finished_at <= ?",
                (segment.started, segment.ended),
            )
        ]
        marks = ",".join("?" * len(images))
        masks = db.execute(
            f"SELECT clicks, seconds FROM masks WHERE image_id IN ({marks}) "
            "AND origin = 'manual' AND state = 'accepted'",
            images,
        ).fetchall()
    return {
        "images": len(images),
        "masks": len(masks),
        "clicks_per_mask": statistics.fmean(m["clicks"] for m in masks),
        "seconds_per_mask": statistics.median(m["seconds"] for m in masks),
        "masks_per_image": len(masks) / len(images),
    }


def round_records(campaign: Campaign) -> list[dict[str, Any]]:
    """Each finished round: name, promoted, its and its parent's held-out metrics."""
    with campaign.db.read() as db:
        rows = db.execute(
            "SELECT name, promoted, detail FROM rounds WHERE status = 'done' ORDER BY round_id"
        ).fetchall()
    records = []
    for row in rows:
        detail = json.loads(row["detail"])
        records.append({"name": row["name"], "promoted": bool(row["promoted"]), **detail})
    return records


def held_out_miou(records: list[dict[str, Any]]) -> list[float | None]:
    """The 1-click mIoU of the model in use in each segment: the first round's parent
    (the starting model), then after each round the promoted model or its kept parent."""
    if not records:
        return [None]
    parent = records[0].get("parent_metrics") or {}
    values: list[float | None] = [parent.get("point_miou")]
    for record in records:
        metrics = record["metrics"] if record["promoted"] else record.get("parent_metrics")
        values.append((metrics or {}).get("point_miou"))
    return values


def plot_loop(result: dict[str, Any], path: Path) -> Path:
    """The paper's stage-1 figures across rounds, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("clicks_per_mask", "clicks per mask"),
        ("seconds_per_mask", "median s per mask"),
        ("masks_per_image", "masks per image"),
        ("point_miou", "held-out 1-click mIoU"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 3))
    for axis, (key, title) in zip(axes, panels):
        points = [(r, v) for r, v in zip(result["rounds"], result[key]) if v is not None]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        axis.set(title=title, xlabel="round")
        axis.set_xticks(result["rounds"])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run_loop(root: Path, args: argparse.Namespace, started: float) -> dict[str, Any]:
    scenes, held_out, folder = root / "scenes", root / "held-out", root / "campaign"
    write_synthetic_dataset(str(scenes), num_images=args.images, split="test", options=UNSEEN)
    write_synthetic_dataset(str(held_out), num_images=HELD_OUT_IMAGES, split="val", options=UNSEEN)
    create_campaign(folder, scenes, held_out, args)
    campaign = Campaign(folder)
    policy = AnnotatorPolicy()
    server, url = start_server(campaign)  # with its embed job and rounds beside it
    segments = []
    try:
        for number in range(args.rounds + 1):
            segments.append(annotate(campaign, url, scenes, args.masks_per_round, number, policy))
            figures = segment_figures(campaign, segments[-1])
            print(f"round {number}: {json.dumps(figures)}", flush=True)
            if number < args.rounds:
                wait_for_round(campaign, number + 1)
                print(f"  {round_records(campaign)[-1]['reason']}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=120)
    stats = campaign_stats(campaign)
    print(format_stats(stats))
    plot_stats(stats, folder / STATS_PLOT)
    figures = [segment_figures(campaign, segment) for segment in segments]
    records = round_records(campaign)
    return {
        "rounds": list(range(len(segments))),
        "clicks_per_mask": [round(f["clicks_per_mask"], 3) for f in figures],
        "seconds_per_mask": [round(f["seconds_per_mask"], 2) for f in figures],
        "masks_per_image": [round(f["masks_per_image"], 2) for f in figures],
        "point_miou": [None if v is None else round(v, 4) for v in held_out_miou(records)],
        "promoted": [r["promoted"] for r in records],
        "minutes": round((time.perf_counter() - started) / 60, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds (segments: rounds + 1)")
    parser.add_argument("--masks-per-round", type=int, default=40, help="retrain_every")
    parser.add_argument("--steps", type=int, default=40, help="training steps per round")
    parser.add_argument("--iterations", type=int, default=5, help="simulated iterations")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--kind", choices=("decoder", "full"), default="decoder")
    parser.add_argument("--images", type=int, default=100, help="campaign images")
    parser.add_argument("--plot", type=Path, default=Path("loop.png"))
    parser.add_argument("--keep", type=Path, default=None, help="keep the campaign here")
    args = parser.parse_args()
    print(machine())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        root = args.keep or Path(folder)
        result = run_loop(root, args, started)
        print(f"loop plot: {plot_loop(result, args.plot)}")
        first, last = result["clicks_per_mask"][0], result["clicks_per_mask"][-1]
        print(f"clicks per mask after the last round: {last / first:.2f}x round 0")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
