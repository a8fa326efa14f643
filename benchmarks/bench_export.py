"""`saengine export` against supervision's exporters, in one process, on the same synthetic
SA-1B dataset (exact masks, two-part objects, holes cut by occlusion): images per second
and the IoU each output keeps of the masks when read back with pycocotools (COCO) or
filled as YOLO's tools fill it (OpenCV).

    python -m benchmarks.bench_export [--images 40] [--size 512]

supervision needs every mask of the dataset decoded in memory (a DetectionDataset holds
N x H x W booleans per image); this engine holds one image's masks at a time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from benchmarks.common import machine
from engine.dataset.formats import geometry, get_format, read_labels
from engine.dataset.formats.command import open_dataset
from engine.dataset.formats.export import export_samples
from engine.dataset.formats.records import ExportOptions
from engine.training.synthetic import SceneOptions, write_synthetic_dataset


def truth(dataset: Path) -> dict[str, list[np.ndarray]]:
    _, samples = open_dataset(str(dataset), {})
    return {
        f"{key}.jpg": [geometry.decode(a["segmentation"]) for a in json.loads(raw)["annotations"]]
        for key, _, raw in samples
    }


def coco_iou(path: Path, masks: dict[str, list[np.ndarray]]) -> float:
    """Mean IoU of a COCO file's masks (pycocotools) against the truth, image by image."""
    coco = COCO(str(path))
    ious = []
    for image in coco.imgs.values():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        for ann, mask in zip(anns, masks[Path(image["file_name"]).name], strict=True):
            drawn = coco.annToMask(ann).astype(bool)
            ious.append((drawn & mask).sum() / max((drawn | mask).sum(), 1))
    return float(np.mean(ious))


def yolo_iou(folder: Path, masks: dict[str, list[np.ndarray]]) -> float:
    """Mean over true masks of the best IoU among the YOLO labels of its image, filled as
    YOLO's tools fill them (OpenCV; an exporter may write a mask as several lines)."""
    ious = []
    for labels in read_labels(str(folder), "yolo-seg"):
        drawn = [geometry.decode(o.rle).astype(bool) for o in labels.objects if o.rle]
        for mask in masks[Path(labels.file_name).name]:
            best = max(((d & mask).sum() / max((d | mask).sum(), 1) for d in drawn), default=0)
            ious.append(best)
    return float(np.mean(ious))


def ours(dataset: Path, output: Path, fmt: str, *, polygons: bool = False) -> float:
    total, samples = open_dataset(str(dataset), {})
    start = time.perf_counter()
    export_samples(
        samples,
        output=output,
        format=get_format(fmt),
        options=ExportOptions(polygons=polygons),
        num_images=total,
        progress=False,
    )
    return total / (time.perf_counter() - start)


def supervision_export(dataset: Path, output: Path) -> tuple[float, float, int]:
    """(images/s of COCO, images/s of YOLO, bytes of masks held) through supervision."""
    import supervision as sv

    total, samples = open_dataset(str(dataset), {})
    start = time.perf_counter()
    images, annotations, held = {}, {}, 0
    (output / "images").mkdir(parents=True)
    for key, jpg, raw in samples:
        path = output / "images" / f"{key}.jpg"
        path.write_bytes(jpg)
        decoded = [geometry.decode(a["segmentation"]) for a in json.loads(raw)["annotations"]]
        masks = np.ascontiguousarray(np.stack(decoded).astype(bool))  # OpenCV wants C order
        boxes = sv.mask_to_xyxy(masks).astype(float)
        detections = sv.Detections(xyxy=boxes, mask=masks, class_id=np.zeros(len(masks), int))
        images[str(path)], annotations[str(path)] = str(path), detections
        held += masks.nbytes
    dataset_sv = sv.DetectionDataset(
        classes=["object"], images=list(images), annotations=annotations
    )
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    dataset_sv.as_coco(annotations_path=str(output / "annotations.json"))
    coco_rate = total / (loaded + time.perf_counter() - start)
    start = time.perf_counter()
    dataset_sv.as_yolo(
        annotations_directory_path=str(output / "labels"), data_yaml_path=str(output / "data.yaml")
    )
    yolo_rate = total / (loaded + time.perf_counter() - start)
    return coco_rate, yolo_rate, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        options = SceneOptions(size=args.size, objects=(10, 20), part_probability=0.5)
        write_synthetic_dataset(str(root / "data"), num_images=args.images, options=options)
        masks = truth(root / "data")
        count = sum(map(len, masks.values()))
        print(f"{args.images} images of {args.size} px, {count} masks")
        rows = []
        for fmt, polygons in (
            ("coco", False),
            ("coco", True),
            ("yolo-seg", True),
            ("cvat", False),
            ("labelstudio", False),
        ):
            out = root / f"{fmt}-{polygons}"
            rate = ours(root / "data", out, fmt, polygons=polygons)
            iou = float("nan")
            if fmt in ("coco", "yolo-seg"):
                iou = (
                    coco_iou(out / "annotations.json", masks)
                    if fmt == "coco"
                    else yolo_iou(out, masks)
                )
            rows.append((f"saengine {fmt}{' polygons' if polygons else ''}", rate, iou))
        coco_rate, yolo_rate, held = supervision_export(root / "data", root / "sv")
        rows.append(
            (
                "supervision as_coco (polygons)",
                coco_rate,
                coco_iou(root / "sv" / "annotations.json", masks),
            )
        )
        rows.append(("supervision as_yolo", yolo_rate, yolo_iou(root / "sv", masks)))
        base = rows[-2][1]
        print(f"{'exporter':36s} {'images/s':>9s} {'x sv coco':>9s} {'IoU':>9s}")
        for name, rate, iou in rows:
            print(f"{name:36s} {rate:9.1f} {rate / base:9.2f} {iou:9.4f}")
        print(f"supervision held {held / 1e6:.1f} MB of decoded masks for {args.images} images")


if __name__ == "__main__":
    main()
