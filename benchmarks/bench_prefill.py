"""Stage-2 prefill: images/s of the prefill step (the work a prefill worker does per image:
the SAM image embedding, the detector on it, SAM's box-prompted masks and their filter)
against the SAM image encoder alone, measured in the same process on the same images.

The encoder is the baseline because every image pays for it anyway (the annotators need the
embedding): the ratio says what prefilling adds. Boxes per image are fixed (`--boxes`, the
top-scoring detections of a small detector) so the decoder's share is the same whatever the
detector's training; the filter keeps what it keeps.

    python -m benchmarks.bench_prefill [--images 12] [--boxes 10 40] [--model bundled|vit_b]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from benchmarks.common import machine
from engine.embeddings import embed_image
from engine.models import load_model
from engine.training.synthetic import SceneOptions, make_scene
from model import SamPredictor, build_sam
from stages.semi import BoxDetector, DetectorConfig, detect
from stages.semi.prefill import PrefillFilter, masks_from_boxes

SMALL = DetectorConfig(channels=64, head_convs=2, scales=(2.0, 1.0, 0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--boxes", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--model", choices=["bundled", "vit_b"], default="bundled")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sam = load_model("vit_mini", "bundled") if args.model == "bundled" else build_sam("vit_b")
    sam.eval()
    predictor = SamPredictor(sam)
    size = sam.image_encoder.img_size
    config = replace(SMALL, embed_dim=sam.prompt_encoder.embed_dim, image_size=size)
    torch.manual_seed(0)
    detector = BoxDetector(config).eval()
    rng = np.random.default_rng(0)
    images = [make_scene(rng, SceneOptions(size=size)).image for _ in range(args.images)]
    settings = PrefillFilter(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    print(machine())
    print(f"SAM {args.model} ({size} input), small detector, {args.images} images")

    def encoder_only() -> None:
        for image in images:
            embed_image(predictor, image)
            predictor.reset_image()

    def prefill(boxes_per_image: int) -> int:
        kept = 0
        for image in images:
            embedding = embed_image(predictor, image)
            boxes, scores = detect(
                detector, embedding.array, original_size=image.shape[:2], score_thresh=0.0
            )
            boxes, scores = _top(boxes, scores, boxes_per_image, image.shape[:2], rng)
            kept += len(masks_from_boxes(predictor, boxes, scores, settings))
            predictor.reset_image()
        return kept

    encoder_only()  # warm-up
    started = time.perf_counter()
    encoder_only()
    base = time.perf_counter() - started
    print(f"encoder alone: {args.images / base:.2f} images/s ({1000 * base / args.images:.0f} ms)")
    for count in args.boxes:
        started = time.perf_counter()
        kept = prefill(count)
        took = time.perf_counter() - started
        print(
            f"prefill, {count} boxes/image: {args.images / took:.2f} images/s "
            f"({1000 * took / args.images:.0f} ms; {kept / args.images:.1f} masks kept/image) "
            f"= {base / took:.2f}x the encoder's rate"
        )


def _top(
    boxes: np.ndarray,
    scores: np.ndarray,
    count: int,
    size_hw: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The `count` best detections; random boxes fill up when an untrained detector gives
    fewer."""
    boxes, scores = boxes[:count], scores[:count]
    missing = count - len(boxes)
    if missing > 0:
        height, width = size_hw
        corner = rng.uniform(0, 0.7, (missing, 2)) * [width, height]
        side = rng.uniform(0.1, 0.3, (missing, 2)) * [width, height]
        extra = np.concatenate([corner, corner + side], axis=1).astype(np.float32)
        boxes = np.concatenate([boxes, extra])
        scores = np.concatenate([scores, np.full(missing, 0.5, np.float32)])
    return boxes, scores


if __name__ == "__main__":
    main()
