"""The streamed exporter: SA-1B images (key, JPEG bytes, JSON bytes), one at a time, into a
format's writer, each JPEG copied to `<output>/images/<key>.jpg`. Only one image's masks
are held at a time. Formats that write polygons get them traced here, and the IoU of each
polygon (rasterized as COCO's tools do) against its mask is accumulated into the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine.dataset.formats import geometry
from engine.dataset.formats.records import (
    ExportImage,
    ExportObject,
    ExportOptions,
    Format,
)
from engine.dataset.formats.streams import StreamedFile

IMAGES_DIR = "images"
REPORT_FILE = "export.json"
IOU_LEVELS = (0.99, 0.95, 0.9, 0.75)


@dataclass
class PolygonFidelity:
    """Running IoU statistics of polygons against their masks (no per-mask list kept)."""

    count: int = 0
    total: float = 0.0
    minimum: float = 1.0
    below: dict[float, int] = field(default_factory=lambda: dict.fromkeys(IOU_LEVELS, 0))

    def add(self, iou: float) -> None:
        self.count += 1
        self.total += iou
        self.minimum = min(self.minimum, iou)
        for level in IOU_LEVELS:
            self.below[level] += iou < level

    def summary(self) -> dict[str, Any]:
        return {
            "polygons": self.count,
            "mean_iou": round(self.total / max(self.count, 1), 6),
            "min_iou": round(self.minimum, 6) if self.count else None,
            **{f"below_{level}": n for level, n in self.below.items()},
        }


@dataclass
class ExportReport:
    format: str
    images: int = 0
    masks: int = 0
    empty_masks_skipped: int = 0
    seconds: float = 0.0
    fidelity: PolygonFidelity | None = None
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "images": self.images,
            "masks": self.masks,
            "empty_masks_skipped": self.empty_masks_skipped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images / max(self.seconds, 1e-9), 2),
            "polygon_fidelity": None if self.fidelity is None else self.fidelity.summary(),
            "files": self.files,
        }


def export_samples(
    samples: Iterable[tuple[str, bytes, bytes]],
    *,
    output: Path,
    format: Format,
    options: ExportOptions,
    num_images: int,
    copy_images: bool = True,
    progress: bool = True,
) -> ExportReport:
    """Write `num_images` samples (key, jpg, json) to `output` in `format`; returns the
    report, also written to <output>/export.json."""
    started = time.perf_counter()
    shape = format.geometry(options)
    report = ExportReport(
        format=format.name, fidelity=None if shape == "rle" else PolygonFidelity()
    )
    (output / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    writer = format.writer(output, options, num_images)
    try:
        bar = tqdm(
            samples,
            total=num_images,
            desc=f"export {format.name}",
            unit="image",
            disable=not progress,
        )
        for key, jpg, raw in bar:
            image = export_image(key, raw, format=format, options=options, report=report)
            if copy_images:
                (output / IMAGES_DIR / image.file_name).write_bytes(jpg)
            writer.add(image)
            report.images += 1
    except BaseException:
        writer.abandon()
        raise
    report.files = [str(path) for path in writer.close()]
    report.seconds = time.perf_counter() - started
    summary = StreamedFile(output / REPORT_FILE)
    summary.write(json.dumps(report.summary(), indent=2) + "\n")
    summary.commit()
    return report


def export_image(
    key: str, raw: bytes, *, format: Format, options: ExportOptions, report: ExportReport
) -> ExportImage:
    """One SA-1B JSON as an ExportImage (polygons traced when the format writes them)."""
    shape = format.geometry(options)
    try:
        record = json.loads(raw)
        block = record["image"]
        width, height = int(block["width"]), int(block["height"])
        annotations = list(record.get("annotations", []))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{key}: not an SA-1B image record ({error})") from error
    objects = []
    for annotation in annotations:
        if int(annotation.get("area", 1)) == 0:
            report.empty_masks_skipped += 1
            continue
        item = ExportObject(annotation=annotation)
        if shape != "rle":
            item.polygons = _polygons(item.rle, format=format, options=options, report=report)
        objects.append(item)
        report.masks += 1
    return ExportImage(
        image_id=int(block.get("image_id", report.images + 1)),
        file_name=f"{key}.jpg",
        width=width,
        height=height,
        objects=objects,
    )


def _polygons(
    rle: geometry.CocoRle, *, format: Format, options: ExportOptions, report: ExportReport
) -> list[Any]:
    """The mask's polygons as `format` writes them; their IoU (filled as the format's
    readers fill them) against the mask goes into the report."""
    centres = format.pixel_centres
    mask = geometry.decode(rle)
    parts = geometry.mask_polygons(mask, tolerance=options.polygon_tolerance, centres=centres)
    joined = geometry.single_polygon(parts)
    shape = format.geometry(options)
    polygons = parts if shape == "parts" or joined is None else [joined]
    height, width = mask.shape
    drawn = geometry.rasterize(polygons, height=height, width=width, centres=centres)
    if report.fidelity is not None:
        report.fidelity.add(geometry.rle_iou(drawn, rle))
    return polygons
