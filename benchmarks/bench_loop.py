"""The data engine's loop on a CPU: rounds that cut the annotators' clicks per mask.

    python -m benchmarks.bench_loop [--rounds 4] [--masks-per-round 150] [--steps 400]
        [--kind full|decoder] [--iou-target 0.75] [--images 400] [--plot loop.png]
        [--keep <dir>]

A stage-1 campaign on scenes of a family the starting model (the bundled one, trained on the
`shapes` family) has not seen: `saengine synth family=clutter` (stars, rings, crescents and
blobs with other textures over a cluttered background; one to three objects of at least 400
pixels per scene). The campaign's server runs with its embed job and its rounds
(`retrain_every` = --masks-per-round accepted masks, `rounds.kind` = --kind); scripted
annotators (two at a time, accepting at --iou-target) work on it through its HTTP API in
small batches until that many masks are new, then wait while the round the server triggered
trains on every mask so far, is evaluated on held-out scenes (another split; the metric: the
1-click mIoU of the best of the three masks, the one the annotators pick) and, if it beats
its parent there, becomes the campaign's model (a full round's model gets the queue
embedded again).

Two measures per round r, both on images no round trained on:
- the measuring set (what the target is read on): the same 60 scenes (split val, seed 1:
  neither the campaign's nor the held-out ones), every object annotated by the scripted
  annotator with the model in use in round r, with the same prompts for every model, so
  that rounds differ only by the model: clicks per mask, median seconds per mask (the
  annotator model's clock), accepted masks per image;
- the campaign: the images annotated after round r and before round r + 1 (different images
  each round, which moves clicks per mask by up to a fifth with one model).
Also the held-out metric of the model in use. Writes the campaign's stats.png (per model
version) and the loop plot (--plot); the last output line is JSON: {"rounds",
"clicks_per_mask", "seconds_per_mask", "masks_per_image", "held_out_miou", "promoted",
"campaign": {the same three, "images", "masks"}, "minutes"}.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from PIL import Image

from benchmarks.common import machine
from engine.campaigns.campaign import Campaign
from engine.campaigns.masks import count_accepted_after, last_mask_id
from engine.campaigns.rounds import round_counts
from engine.campaigns.serve import saengine_command
from engine.campaigns.server_process import start_server
from engine.campaigns.simulate import simulate
from engine.campaigns.stats import STATS_PLOT, campaign_stats, format_stats, plot_stats
from engine.campaigns.versions import current_model, model_config_row
from engine.training.synthetic import (
    Scene,
    SceneOptions,
    make_scenes,
    scene_jpeg,
    write_synthetic_dataset,
)
from model import Sam, SamPredictor
from stages.assisted.annotator import AnnotatorPolicy, annotate_object, predictor_decode

# One to three objects of at least 400 pixels per 256-pixel scene: the 64 x 64 mask logits of
# the bundled 256-pixel model can outline them, so what limits it is the unseen family, not
# the resolution.
UNSEEN = SceneOptions(family="clutter", objects=(1, 3), min_area=400)
HELD_OUT_IMAGES = 24
MEASURE_SCENES = 60
METRIC = "point_miou_oracle"  # held-out 1-click mIoU, the best of the three masks
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
        f"rounds.train.masks_per_image={args.masks_per_image}",
        f"rounds.train.num_iterations={args.iterations}",
        f"rounds.train.lr={args.lr}",
        f"rounds.train.warmup_steps={max(1, args.steps // 10)}",
        "rounds.train.decay_at=[0.8]",
        f"rounds.eval.max_images={HELD_OUT_IMAGES}",
        "rounds.eval.max_masks=6",
        # The annotators pick the best of the three first masks (the page cycles through
        # them), so a round is judged on that choice, not on the IoU head's.
        f"rounds.eval.metric={METRIC}",
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
    values: list[float | None] = [parent.get(METRIC)]
    for record in records:
        metrics = record["metrics"] if record["promoted"] else record.get("parent_metrics")
        values.append((metrics or {}).get(METRIC))
    return values


def measure_scenes(count: int = MEASURE_SCENES) -> list[Scene]:
    """Scenes of the unseen family that neither the campaign nor the rounds' held-out data
    hold (split val, seed 1), through the same JPEG encoding as the campaign's images."""
    return [
        Scene(np.asarray(Image.open(io.BytesIO(scene_jpeg(scene))).convert("RGB")), scene.masks)
        for scene in make_scenes(count, "val", 1, UNSEEN)
    ]


def scripted_figures(sam: Sam, scenes: list[Scene], policy: AnnotatorPolicy) -> dict[str, float]:
    """The scripted annotator on every object of `scenes` with `sam` (the same objects and
    the same random prompts for every model): clicks per object, median seconds per object,
    accepted masks per image."""
    predictor = SamPredictor(sam)
    outcomes = []
    for number, scene in enumerate(scenes):
        predictor.set_image(scene.image)
        decode = predictor_decode(predictor)
        for index, target in enumerate(scene.masks):
            if target.sum() >= policy.min_area:
                rng = np.random.default_rng([number, index])
                outcomes.append(annotate_object(decode, target, policy, rng))
    return {
        "clicks_per_mask": statistics.fmean(o.clicks for o in outcomes),
        "seconds_per_mask": statistics.median(o.seconds for o in outcomes),
        "masks_per_image": sum(o.accepted for o in outcomes) / len(scenes),
    }


def model_of(campaign: Campaign, sha: str) -> Sam:
    with campaign.db.read() as db:
        config = model_config_row(db, sha)
    sam: Sam = instantiate(config)
    return sam.eval()


def plot_loop(result: dict[str, Any], path: Path) -> Path:
    """The paper's stage-1 figures across rounds, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("clicks_per_mask", "clicks per mask"),
        ("seconds_per_mask", "median s per mask"),
        ("masks_per_image", "masks per image"),
        ("held_out_miou", "held-out 1-click mIoU (best of 3)"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 3))
    for axis, (key, title) in zip(axes, panels):
        points = [(r, v) for r, v in zip(result["rounds"], result[key]) if v is not None]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="measuring set")
        if key in result["campaign"]:
            axis.plot(result["rounds"], result["campaign"][key], "--", marker=".", label="campaign")
            axis.legend(fontsize=7)
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
    policy = AnnotatorPolicy(iou_target=args.iou_target)
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
    live = [segment_figures(campaign, segment) for segment in segments]
    fixed, models = [], measure_scenes()
    for number, segment in enumerate(segments):
        fixed.append(scripted_figures(model_of(campaign, segment.model), models, policy))
        print(f"round {number} on the measuring scenes: {json.dumps(fixed[-1])}", flush=True)
    records = round_records(campaign)

    def series(figures: list[dict[str, Any]], key: str) -> list[float]:
        return [round(f[key], 3) for f in figures]

    keys = ("clicks_per_mask", "seconds_per_mask", "masks_per_image")
    return {
        "rounds": list(range(len(segments))),
        **{key: series(fixed, key) for key in keys},
        "held_out_miou": [None if v is None else round(v, 4) for v in held_out_miou(records)],
        "promoted": [r["promoted"] for r in records],
        "campaign": {key: series(live, key) for key in (*keys, "images", "masks")},
        "minutes": round((time.perf_counter() - started) / 60, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds (segments: rounds + 1)")
    parser.add_argument(
        "--masks-per-round",
        type=int,
        default=150,
        help="a round after this many accepted masks (retrain_every)",
    )
    parser.add_argument("--steps", type=int, default=400, help="training steps per round")
    parser.add_argument(
        "--iterations",
        type=int,
        default=3,
        help="simulated interactive iterations per training mask",
    )
    parser.add_argument("--masks-per-image", type=int, default=4, help="masks per training image")
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate of a round")
    parser.add_argument(
        "--kind",
        choices=("full", "decoder"),
        default="full",
        help="full: the whole model; decoder: prompt encoder and mask decoder on stored embeddings",
    )
    parser.add_argument(
        "--iou-target", type=float, default=0.75, help="the annotators accept at this IoU"
    )
    parser.add_argument("--images", type=int, default=400, help="campaign images")
    parser.add_argument("--plot", type=Path, default=Path("loop.png"), help="the loop plot (PNG)")
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
