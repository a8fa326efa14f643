"""Ours vs the official SAM at identical random weights, in one process.

CPU: encoder latency (vit_b) and 1/64/1024-prompt decode latency with a cached embedding.
GPU (when present): vit_b and vit_h encoder images/s and MFU in fp32 and bf16.
Prints a table of times and ratios (official / ours). Usage:
    python -m benchmarks.bench_model [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import machine, median_seconds, paired_median_seconds
from model import SamPredictor
from tests.conftest import load_rgb
from tests.oracle import build_pair, official

CHUNK = 64
# Dense peak rates used for MFU (datasheet, SXM parts): fp32 without TF32, bf16 tensor cores.
PEAK_TFLOPS = {"H100": {"fp32": 67.0, "bf16": 989.0}, "H200": {"fp32": 67.0, "bf16": 989.0}}


def decode_ours(predictor: SamPredictor, coords: torch.Tensor, labels: torch.Tensor) -> None:
    for start in range(0, len(coords), CHUNK):
        predictor.decode_low_res(coords[start : start + CHUNK], labels[start : start + CHUNK])


def decode_official(predictor, coords: torch.Tensor, labels: torch.Tensor) -> None:
    model = predictor.model
    with torch.inference_mode():
        for start in range(0, len(coords), CHUNK):
            points = (coords[start : start + CHUNK], labels[start : start + CHUNK])
            sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=None)
            model.mask_decoder(
                image_embeddings=predictor.features,
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )


def bench_cpu(quick: bool) -> list[tuple[str, float, float]]:
    rows = []
    ours, reference = build_pair("vit_b")
    image = load_rgb("dog.jpg")
    mine, theirs = SamPredictor(ours), official.SamPredictor(reference)
    repeats = 1 if quick else 3
    t_ours, t_ref = paired_median_seconds(
        lambda: mine.set_image(image), lambda: theirs.set_image(image), repeats=repeats
    )
    rows.append(("vit_b encoder, 1 image (set_image)", t_ours, t_ref))
    for n_prompts in (1, 64) if quick else (1, 64, 1024):
        coords = torch.rand(n_prompts, 1, 2) * 1000
        labels = torch.ones(n_prompts, 1, dtype=torch.int)
        reps = 20 if n_prompts == 1 else (1 if n_prompts > 64 else repeats)
        t_ours, t_ref = paired_median_seconds(
            lambda c=coords, lab=labels: decode_ours(mine, c, lab),
            lambda c=coords, lab=labels: decode_official(theirs, c, lab),
            repeats=reps,
        )
        rows.append((f"decode {n_prompts} point prompts (low-res, multimask)", t_ours, t_ref))
    point = dict(point_coords=np.array([[400.0, 300.0]]), point_labels=np.array([1]))
    t_ours, t_ref = paired_median_seconds(
        lambda: mine.predict(**point), lambda: theirs.predict(**point), repeats=20
    )
    rows.append(("predict 1 point, full-res masks", t_ours, t_ref))
    return rows


def encoder_flops(sam: torch.nn.Module, images: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        sam.image_encoder(images)
    return counter.get_total_flops()


def bench_gpu() -> list[str]:
    lines = []
    device = torch.device("cuda")
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
    for name in ("vit_b", "vit_h"):
        ours, reference = build_pair(name)
        ours, reference = ours.to(device), reference.to(device)
        batch = 8
        images = torch.randn(batch, 3, 1024, 1024, device=device)
        flops = encoder_flops(ours, images[:1])
        for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            for label, model in (("ours", ours), ("official", reference)):

                def run(model=model, dtype=dtype, images=images):
                    with (
                        torch.inference_mode(),
                        torch.autocast(
                            "cuda", dtype=dtype or torch.float32, enabled=dtype is not None
                        ),
                    ):
                        model.image_encoder(images)

                seconds = median_seconds(run, repeats=5, warmup=2, device=device)
                rate = batch / seconds
                mfu = "" if peak is None else f", MFU {rate * flops / 1e12 / peak[dtype_name]:.1%}"
                lines.append(f"{name} encoder {dtype_name} {label}: {rate:.2f} images/s{mfu}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no 1024-prompt case")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{'case':55s} {'ours s':>9s} {'official s':>11s} {'speed-up':>9s}")
    for case, t_ours, t_ref in bench_cpu(args.quick):
        print(f"{case:55s} {t_ours:9.3f} {t_ref:11.3f} {t_ref / t_ours:8.2f}x")
    if torch.cuda.is_available():
        for line in bench_gpu():
            print(line)


if __name__ == "__main__":
    main()
