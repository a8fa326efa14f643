"""The generator with torchvision's NMS against the Python-loop NMS it replaced, in one
process, same model, settings and images; and the two NMS alone on box sets of the sizes
the generator sees. The outputs must be identical.

    python -m benchmarks.bench_nms [--model bundled] [--points 16] [--images dog.jpg ...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

import stages.automatic.generator as generator_module
from benchmarks.common import machine
from engine.models import load_model
from model import SamPredictor
from stages.automatic import AutomaticMaskGenerator, GeneratorConfig
from stages.automatic.filters import box_iou_matrix, nms
from tests.conftest import load_rgb

Nms = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def loop_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """The baseline: the project's earlier greedy NMS (IoU matrix, then a Python loop)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = (box_iou_matrix(boxes[order].float()) > iou_thresh).cpu().numpy()
    alive = [True] * len(order)
    kept = []
    for rank in range(len(order)):
        if not alive[rank]:
            continue
        kept.append(rank)
        for other in overlaps[rank, rank + 1 :].nonzero()[0]:
            alive[rank + 1 + other] = False
    return order[torch.as_tensor(kept, device=order.device)]


@contextmanager
def generator_nms(implementation: Nms) -> Iterator[None]:
    original = generator_module.nms
    generator_module.nms = implementation
    try:
        yield
    finally:
        generator_module.nms = original


def _random_boxes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=generator) * 900
    wh = torch.rand(count, 2, generator=generator) * 300 + 2
    return torch.cat([xy, xy + wh], dim=1), torch.rand(count, generator=generator)


def _time(function: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def bench_nms_alone() -> None:
    for count in (100, 1000, 3000):
        boxes, scores = _random_boxes(count, count)
        assert torch.equal(loop_nms(boxes, scores, 0.7), nms(boxes, scores, 0.7))
        before = _time(lambda: loop_nms(boxes, scores, 0.7), 5)  # noqa: B023
        after = _time(lambda: nms(boxes, scores, 0.7), 5)  # noqa: B023
        print(
            f"nms alone, {count} boxes: loop {1000 * before:.2f} ms, torchvision "
            f"{1000 * after:.2f} ms, x{before / after:.1f}"
        )


def bench_generator(args: argparse.Namespace) -> None:
    sam = load_model(args.model, checkpoint="bundled" if args.model == "vit_mini" else None)
    config = GeneratorConfig(
        points_per_side=args.points, pred_iou_thresh=0.02, stability_score_thresh=0.05
    )
    generator = AutomaticMaskGenerator(SamPredictor(sam), config)
    totals = {"loop": 0.0, "torchvision": 0.0}
    for name in args.images:
        image = load_rgb(name)
        results = {}
        for label, implementation in (("loop", loop_nms), ("torchvision", nms)):
            with generator_nms(implementation), torch.inference_mode():
                start = time.perf_counter()
                results[label] = generator.generate(image)
                totals[label] += time.perf_counter() - start
        assert results["loop"] == results["torchvision"], f"{name}: outputs differ"
        print(f"{name}: {len(results['loop'])} masks, identical with both NMS")
    print(
        f"generator, {len(args.images)} images: loop NMS {totals['loop']:.2f} s, torchvision "
        f"{totals['torchvision']:.2f} s, x{totals['loop'] / totals['torchvision']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vit_mini", help="vit_mini (the bundled model)")
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--images", nargs="+", default=["dog.jpg", "groceries.jpg", "truck.jpg"])
    args = parser.parse_args()
    print(machine())
    bench_nms_alone()
    bench_generator(args)


if __name__ == "__main__":
    main()
