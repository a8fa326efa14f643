"""The README's demo: the automatic mask generator over the bundled sample images.

Writes one SA-1B-format JSON per image (and a mask overlay PNG) to outputs/demo/ and prints
a summary. Until this project ships a trained small model, it runs `vit_tiny` with seeded
random weights and a sharpened decoder (see model.testing) and lowered thresholds: the
masks are real generator output, not meaningful segments. Give an official checkpoint to
see real ones:  SAENGINE_DEMO_MODEL=vit_b SAENGINE_DEMO_CHECKPOINT=/path/sam_vit_b_01ec64.pth
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from model import Sam, build_sam
from model.testing import sharpen_decoder_
from stages.automatic import AutomaticMaskGenerator, annotations_to_masks

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "images"
OUTPUT = REPO / "outputs" / "demo"


def build_model() -> tuple[Sam, dict[str, Any]]:
    name = os.environ.get("SAENGINE_DEMO_MODEL", "vit_tiny")
    checkpoint = os.environ.get("SAENGINE_DEMO_CHECKPOINT")
    if checkpoint:
        return build_sam(name, checkpoint=checkpoint), {}
    torch.manual_seed(0)
    sam = build_sam(name)
    sharpen_decoder_(sam)
    return sam, dict(points_per_side=8, pred_iou_thresh=0.5, stability_score_thresh=0.5)


def save_overlay(image: np.ndarray, masks: np.ndarray, path: Path) -> None:
    colours = np.random.default_rng(0).integers(0, 255, (max(len(masks), 1), 3))
    overlay = image.astype(np.float32)
    for colour, mask in zip(colours, masks):
        overlay[mask] = 0.5 * overlay[mask] + 0.5 * colour
    Image.fromarray(overlay.astype(np.uint8)).save(path)


def main() -> None:
    sam, settings = build_model()
    generator = AutomaticMaskGenerator(sam, **settings)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    paths = sorted(SAMPLES.glob("*.jpg"))
    start, total_masks = time.perf_counter(), 0
    for image_id, path in enumerate(tqdm(paths, desc="images", unit="img")):
        image = np.array(Image.open(path).convert("RGB"))
        annotations = generator.generate(image)
        for index, annotation in enumerate(annotations):
            annotation["id"] = index
        record = {
            "image": {
                "image_id": image_id,
                "width": image.shape[1],
                "height": image.shape[0],
                "file_name": path.name,
            },
            "annotations": annotations,
        }
        (OUTPUT / f"{path.stem}.json").write_text(json.dumps(record))
        save_overlay(image, annotations_to_masks(annotations), OUTPUT / f"{path.stem}_masks.png")
        total_masks += len(annotations)
    seconds = time.perf_counter() - start
    print(f"{len(paths)} images, {total_masks} masks in {seconds:.1f} s -> {OUTPUT}")
    print("each <name>.json is SA-1B format (COCO RLE masks); <name>_masks.png shows them")


if __name__ == "__main__":
    main()
