"""Automatic generator, ours vs official, identical settings and weights, in one process.

Models: `vit_b` (or another registry name) with seeded random weights and a sharpened
decoder, or `bundled` (the trained vit_mini shipped in model/weights), loaded into both
implementations. Thresholds are lowered so that masks pass. Prints seconds per image, the
ratio, mask counts and how many of our masks match the official ones at IoU >= 0.99.

--fast also runs our bf16 fast mode (autocast; on CUDA when present) and prints its drift
from our exact mode: the share of exact masks matched one to one at IoU >= 0.9 and the
difference in mask count. Usage:
    python -m benchmarks.bench_generator [--model vit_b|bundled] [--points 16] [--fast]
        [--images dog.jpg ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import machine, sync
from engine.models import BUNDLED_CHECKPOINT
from model import SamPredictor, build_sam
from stages.automatic import AutomaticMaskGenerator, annotations_to_masks
from tests.conftest import load_rgb
from tests.oracle import build_pair, official, official_twin

THRESHOLDS = {
    "bundled": dict(pred_iou_thresh=0.02, stability_score_thresh=0.05),
    "random": dict(pred_iou_thresh=0.5, stability_score_thresh=0.5),
}


def matched_in_order(mine: list[dict], theirs: list[dict]) -> int:
    count = 0
    for a, b in zip(annotations_to_masks(mine), annotations_to_masks(theirs)):
        union = (a | b).sum()
        count += bool(union == 0 or (a & b).sum() / union >= 0.99)
    return count


def matched_one_to_one(exact: list[dict], fast: list[dict], threshold: float = 0.9) -> int:
    """Exact masks that have their own fast mask at IoU >= threshold (greedy, best first)."""
    if not exact or not fast:
        return 0
    a = np.stack(annotations_to_masks(exact)).reshape(len(exact), -1).astype(np.float32)
    b = np.stack(annotations_to_masks(fast)).reshape(len(fast), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    taken: set[int] = set()
    count = 0
    for row in iou:
        for col in np.argsort(-row):
            if row[col] < threshold:
                break
            if col not in taken:
                taken.add(int(col))
                count += 1
                break
    return count


def build_models(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    if name == "bundled":
        ours = build_sam("vit_mini", checkpoint=BUNDLED_CHECKPOINT)
        return ours, official_twin("vit_mini", ours)
    return build_pair(name, seed=3, sharpen=True)


def timed(generator, image: np.ndarray, device: torch.device) -> tuple[list[dict], float]:
    sync(device)
    start = time.perf_counter()
    result = generator.generate(image)
    sync(device)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vit_b", help="registry name or 'bundled'")
    parser.add_argument("--points", type=int, default=16, help="points_per_side")
    parser.add_argument("--images", nargs="+", default=["dog.jpg", "groceries.jpg"])
    parser.add_argument("--fast", action="store_true", help="also measure the bf16 fast mode")
    parser.add_argument("--no-official", action="store_true", help="skip the official run")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ours, reference = build_models(args.model)
    ours, reference = ours.to(device), reference.to(device)
    settings = dict(
        points_per_side=args.points,
        **THRESHOLDS["bundled" if args.model == "bundled" else "random"],
    )
    mine = AutomaticMaskGenerator(ours, **settings)
    theirs = official.SamAutomaticMaskGenerator(reference, output_mode="coco_rle", **settings)
    fast = AutomaticMaskGenerator(SamPredictor(ours, autocast_dtype=torch.bfloat16), **settings)
    print(f"machine: {machine()}; model {args.model}; settings {settings}")
    # One small image through each first, so that one-time start-up costs (thread pools,
    # kernel selection) fall on no measured run.
    warmup = load_rgb(args.images[0])[:128, :128]
    for generator in (mine, theirs, fast) if args.fast else (mine, theirs):
        generator.generate(warmup)
    totals = np.zeros(3)
    drift = np.zeros(3)
    for name in args.images:
        image = load_rgb(name)
        got, t_ours = timed(mine, image, device)
        line = f"{name}: ours {t_ours:.2f} s, {len(got)} masks"
        totals[0] += t_ours
        if not args.no_official:
            want, t_ref = timed(theirs, image, device)
            totals[1] += t_ref
            line += (
                f"; official {t_ref:.2f} s, {len(want)} masks, x{t_ref / t_ours:.2f}, "
                f"matched at IoU>=0.99: {matched_in_order(got, want)}"
            )
        if args.fast:
            quick, t_fast = timed(fast, image, device)
            totals[2] += t_fast
            hits = matched_one_to_one(got, quick)
            drift += (len(got), hits, abs(len(quick) - len(got)))
            line += (
                f"; fast {t_fast:.2f} s, {len(quick)} masks, matched at IoU>=0.9: {hits}/{len(got)}"
            )
        print(line, flush=True)
    summary = f"total: ours {totals[0]:.2f} s"
    if not args.no_official:
        summary += f", official {totals[1]:.2f} s, speed-up x{totals[1] / totals[0]:.2f}"
    if args.fast:
        share = drift[1] / max(drift[0], 1)
        summary += (
            f"; fast {totals[2]:.2f} s (x{totals[0] / totals[2]:.2f} vs exact), "
            f"{share:.1%} of exact masks matched at IoU>=0.9, "
            f"count difference {int(drift[2])} over {len(args.images)} images"
        )
    print(summary)


if __name__ == "__main__":
    main()
