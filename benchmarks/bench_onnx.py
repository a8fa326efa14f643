"""The browser decoder as ONNX on a CPU: latency per click and the quantized variant's drift.

Per click = one point prompt decoded to four full-size mask logits (`OnnxDecoder.run`, what
the web page runs) against our torch decoder doing the same click
(`SamPredictor.predict` with one point, multimask, full-size masks), with 1 and 2 threads,
timed alternately in one process. Models: vit_b (seeded random weights with a sharpened
decoder, 1024-pixel input, a 1500 x 2000 image as SA-1B stores them) and the bundled model
(256-pixel input, dog.jpg at 534 x 800). Drift: IoU of the quantized decoder's thresholded
masks with the fp32 decoder's, all four tokens, over random one- to three-point prompts
(and boxes) on the bundled photos. Usage:
    python -m benchmarks.bench_onnx [--quick] [--compare-exporters]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine
from engine.models import load_model
from model import Sam, SamPredictor
from stages.assisted.onnx_decoder import OnnxDecoder
from stages.assisted.onnx_export import export_decoder_onnx, quantize_decoder_onnx
from tests.conftest import load_rgb

CLICK = np.array([[0.45, 0.55]])  # the clicked point, as a fraction of (W, H)


def interleaved_medians(
    fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds of each function, run in turn (a, b, c, a, b, c, ...) so that a
    machine whose speed drifts affects all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def image_of_size(size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    rgb = load_rgb("truck.jpg")
    return np.array(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def click_latencies(
    sam: Sam, rgb: np.ndarray, folder: Path, *, repeats: int
) -> list[tuple[int, dict[str, float]]]:
    """Per-click medians for torch, ONNX fp32 and ONNX quantized, at 1 and 2 threads."""
    fp32 = export_decoder_onnx(sam, folder / "decoder.onnx")
    quantized = quantize_decoder_onnx(fp32, folder / "decoder.quant.onnx")
    predictor = SamPredictor(sam)
    predictor.set_image(rgb)
    embedding = predictor.get_image_embedding()[0].to(torch.float16).numpy()
    predictor.features = torch.from_numpy(embedding.astype(np.float32))[None]
    height, width = rgb.shape[:2]
    point, label = CLICK * [width, height], np.array([1])
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        decoders = {
            "onnx fp32": OnnxDecoder(fp32, threads=threads),
            "onnx quantized": OnnxDecoder(quantized, threads=threads),
        }
        fns: dict[str, Callable[[], object]] = {
            "torch": lambda: predictor.predict(point, label, multimask_output=True)
        }
        for name, decoder in decoders.items():
            fns[name] = lambda d=decoder: d.run(
                embedding, points=point, labels=label, orig_size=(height, width)
            )
        rows.append((threads, interleaved_medians(fns, repeats=repeats)))
    return rows


def quantized_drift(
    sam: Sam, folder: Path, *, prompts_per_image: int
) -> tuple[np.ndarray, np.ndarray]:
    """IoUs of all four tokens' masks, and of the mask an annotator is shown (the best
    multimask output for a single point, else the single-mask output)."""
    fp32 = export_decoder_onnx(sam, folder / "drift.onnx")
    exact = OnnxDecoder(fp32)
    approx = OnnxDecoder(quantize_decoder_onnx(fp32, folder / "drift.quant.onnx"))
    rng = np.random.default_rng(0)
    ious, shown = [], []
    for name in ("dog.jpg", "groceries.jpg", "truck.jpg"):
        rgb = load_rgb(name)
        predictor = SamPredictor(sam)
        predictor.set_image(rgb)
        embedding = predictor.get_image_embedding()[0].to(torch.float16).numpy()
        size = (rgb.shape[0], rgb.shape[1])
        scale = np.array([size[1], size[0]])
        for index in range(prompts_per_image):
            count = 1 + index % 3
            points = rng.uniform(0.05, 0.95, (count, 2)) * scale
            labels = np.r_[1, rng.integers(0, 2, count - 1)]
            box = None
            if index % 4 == 3:
                corner = rng.uniform(0.05, 0.5, 2) * scale
                box = np.r_[corner, corner + 0.4 * scale]
            kwargs = {"points": points, "labels": labels, "box": box, "orig_size": size}
            reference = exact.run(embedding, **kwargs)
            a, b = reference.masks > 0, approx.run(embedding, **kwargs).masks > 0
            for token in range(4):
                union = (a[token] | b[token]).sum()
                ious.append((a[token] & b[token]).sum() / union if union else 1.0)
            shown.append(ious[-4 + reference.best(multimask=count == 1 and box is None)])
    return np.array(ious), np.array(shown)


def compare_exporters(sam: Sam, folder: Path, *, repeats: int) -> dict[str, float]:
    """The TorchScript exporter (ours) against the torch.export-based one (opset 18), both
    traced without gradients: export seconds and per-click milliseconds (1 thread)."""
    from stages.assisted.contract import INPUT_NAMES, OUTPUT_NAMES
    from stages.assisted.decoder_graph import DecoderGraph
    from stages.assisted.onnx_export import example_inputs

    start = time.perf_counter()
    ours = export_decoder_onnx(sam, folder / "torchscript.onnx", opset=18)
    results = {"torchscript export s": time.perf_counter() - start}
    dynamo_path = folder / "dynamo.onnx"
    points = torch.export.Dim("num_points", min=1, max=1024)
    shapes = {name: None for name in INPUT_NAMES}
    shapes["point_coords"] = shapes["point_labels"] = {1: points}  # type: ignore[assignment]
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            DecoderGraph(sam).eval(),
            example_inputs(sam),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=18,
            dynamo=True,
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
        )
        assert program is not None
        program.save(str(dynamo_path), external_data=False)
    results["torch.export export s"] = time.perf_counter() - start
    embedding = np.random.default_rng(0).normal(size=(256, 64, 64)).astype(np.float16)
    fns = {}
    for name, path in (("torchscript", ours), ("torch.export", dynamo_path)):
        decoder = OnnxDecoder(path)
        fns[name] = lambda d=decoder: d.run(
            embedding, points=np.array([[400.0, 300.0]]), labels=np.array([1]), orig_size=(534, 800)
        )
    for name, seconds in interleaved_medians(fns, repeats=repeats).items():
        results[f"{name} click ms"] = seconds * 1000
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and prompts")
    parser.add_argument("--compare-exporters", action="store_true", help="also time dynamo")
    args = parser.parse_args()
    repeats = 5 if args.quick else 30
    print(f"machine: {machine()}")
    cases = [
        (
            "vit_b (random, sharpened)",
            load_model("vit_b", random_seed=0, sharpen=True),
            (1500, 2000),
        ),
        ("bundled (vit_mini)", load_model("vit_mini", "bundled"), (534, 800)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(
            f"{'model, image':38s} {'threads':>7s} {'torch ms':>9s} {'onnx fp32':>10s} "
            f"{'onnx quant':>11s} {'fp32 vs torch':>14s} {'quant vs torch':>15s}"
        )
        for label, sam, size in cases:
            rgb = load_rgb("dog.jpg") if size == (534, 800) else image_of_size(size)
            for threads, t in click_latencies(sam, rgb, folder, repeats=repeats):
                torch_ms, fp32_ms, quant_ms = (
                    1000 * t["torch"],
                    1000 * t["onnx fp32"],
                    1000 * t["onnx quantized"],
                )
                print(
                    f"{label + f', {size[0]}x{size[1]}':38s} {threads:7d} {torch_ms:9.1f} "
                    f"{fp32_ms:10.1f} {quant_ms:11.1f} {torch_ms / fp32_ms:13.2f}x "
                    f"{torch_ms / quant_ms:14.2f}x"
                )
        drift = quantized_drift(cases[1][1], folder, prompts_per_image=8 if args.quick else 40)
        for label, ious in zip(("all tokens", "shown masks"), drift, strict=True):
            print(
                f"quantized vs fp32, bundled, {label} ({len(ious)} masks): IoU mean "
                f"{ious.mean():.4f}, min {ious.min():.4f}, 5th percentile "
                f"{np.percentile(ious, 5):.4f}, share >= 0.9: {(ious >= 0.9).mean():.3f}"
            )
        if args.compare_exporters:
            for key, value in compare_exporters(cases[0][1], folder, repeats=repeats).items():
                print(f"exporters (vit_b, opset 18, 1 thread): {key} {value:.1f}")


if __name__ == "__main__":
    main()
