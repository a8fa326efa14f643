"""Automatic generator, ours vs official, identical settings and weights, in one process.

vit_b (or --model) with seeded random weights and a sharpened decoder, lowered thresholds so
that masks pass; prints seconds per image, the ratio, mask counts and how many of our masks
match the official ones at IoU >= 0.99. Usage:
    python -m benchmarks.bench_generator [--model vit_b] [--points 16] [--images dog.jpg ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import machine
from stages.automatic import AutomaticMaskGenerator, annotations_to_masks
from tests.conftest import load_rgb
from tests.oracle import build_pair, official


def matched(mine: list[dict], theirs: list[dict]) -> int:
    count = 0
    for a, b in zip(annotations_to_masks(mine), annotations_to_masks(theirs)):
        union = (a | b).sum()
        count += bool(union == 0 or (a & b).sum() / union >= 0.99)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--points", type=int, default=16, help="points_per_side")
    parser.add_argument("--images", nargs="+", default=["dog.jpg", "groceries.jpg"])
    args = parser.parse_args()
    ours, reference = build_pair(args.model, seed=3, sharpen=True)
    settings = dict(points_per_side=args.points, pred_iou_thresh=0.5, stability_score_thresh=0.5)
    mine = AutomaticMaskGenerator(ours, **settings)
    theirs = official.SamAutomaticMaskGenerator(reference, output_mode="coco_rle", **settings)
    print(f"machine: {machine()}; model {args.model}; settings {settings}")
    totals = np.zeros(2)
    for name in args.images:
        image = load_rgb(name)
        start = time.perf_counter()
        got = mine.generate(image)
        middle = time.perf_counter()
        want = theirs.generate(image)
        end = time.perf_counter()
        totals += (middle - start, end - middle)
        print(
            f"{name}: ours {middle - start:.2f} s, official {end - middle:.2f} s, "
            f"x{(end - middle) / (middle - start):.2f}; masks {len(got)} vs {len(want)}, "
            f"matched at IoU>=0.99: {matched(got, want)}"
        )
    print(
        f"total: ours {totals[0]:.2f} s, official {totals[1]:.2f} s, "
        f"speed-up x{totals[1] / totals[0]:.2f}"
    )


if __name__ == "__main__":
    main()
