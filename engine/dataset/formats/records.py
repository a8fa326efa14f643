"""The records every format module speaks: what an exporter writes (`ExportImage`: one SA-1B
image and its masks, with polygons when the format needs them) and what a reader gives
(`ImageLabels`: one image of a label file, each object a mask or a box), and `Format`, the
registry entry that ties a format's writer and reader to its name.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from engine.dataset.formats.geometry import CocoRle, coco_box

# How a format stores a mask: as RLE (the mask itself), as polygons (one per part, holes cut
# in), or as one polygon per object (parts and holes joined by zero-width cuts).
Geometry = Literal["rle", "parts", "single"]
ObjectKind = Literal["mask", "polygon", "box"]


@dataclass(frozen=True)
class ExportOptions:
    """category: the one label name; polygons: polygons instead of masks where the format
    has both; polygon_tolerance: simplification in pixels (0: exact pixel edges);
    labelstudio_target: `predictions` (pre-annotations) or `annotations`;
    labelstudio_image_url: Label Studio's address of an image, `{file_name}` filled in."""

    category: str = "object"
    polygons: bool = False
    polygon_tolerance: float = 0.0
    labelstudio_target: str = "predictions"
    labelstudio_image_url: str = "/data/local-files/?d=images/{file_name}"

    def __post_init__(self) -> None:
        if not self.category:
            raise ValueError("category must be a non-empty name")
        if self.polygon_tolerance < 0:
            raise ValueError(f"polygon_tolerance must be >= 0, got {self.polygon_tolerance}")
        if self.labelstudio_target not in ("predictions", "annotations"):
            raise ValueError(
                f"labelstudio target must be predictions or annotations, "
                f"got {self.labelstudio_target!r}"
            )


@dataclass
class ExportObject:
    """One mask of an SA-1B image: `annotation` is its SA-1B dict (segmentation, bbox, area,
    predicted_iou, ...); `polygons` (K x 2 XY each) when the format writes polygons: the
    mask's parts, or one joined ring for `single`-geometry formats."""

    annotation: dict[str, Any]
    polygons: list[np.ndarray] = field(default_factory=list)

    @property
    def rle(self) -> CocoRle:
        segmentation: CocoRle = self.annotation["segmentation"]
        return segmentation


@dataclass
class ExportImage:
    """One SA-1B image: `file_name` under the export's images/ folder, its size, its
    SA-1B `image_id` and masks."""

    image_id: int
    file_name: str
    width: int
    height: int
    objects: list[ExportObject]


class FormatWriter(Protocol):
    """A format's streamed writer: created on the output folder, given images one at a
    time; `close` commits its files (each written under a temporary name, then renamed)
    and returns them, `abandon` (after an error) drops what is not committed."""

    def add(self, image: ExportImage) -> None: ...

    def close(self) -> list[Path]: ...

    def abandon(self) -> None: ...


@dataclass(frozen=True)
class LabelObject:
    """One object of a label file. kind: `mask` (an RLE in the file), `polygon` (polygons,
    rasterized here at the image size) or `box` (a box only: a prompt for SAM). `rle` is
    None for boxes; `box_xywh` is always set (of the mask for masks and polygons)."""

    kind: ObjectKind
    box_xywh: tuple[float, float, float, float]
    rle: CocoRle | None = None
    label: str = "object"


@dataclass(frozen=True)
class ImageLabels:
    """One image of a label file: `file_name` as the file names it, `image` where it is
    (a path or URL: file names relative to the label file's folder resolved), its size
    in pixels (0 when the file does not say and no object needs it) and its objects."""

    file_name: str
    image: str
    width: int
    height: int
    objects: tuple[LabelObject, ...]


@dataclass(frozen=True)
class Format:
    """A registry entry. writer(output folder, options, num_images) -> FormatWriter;
    geometry(options): how it stores masks; reader(path) -> the images of a label file
    or folder; claims(path): whether a path looks like this format's labels;
    pixel_centres: its polygons are read as pixel centres (OpenCV), not corners
    (`engine.dataset.formats.geometry`)."""

    name: str
    writer: Callable[[Path, ExportOptions, int], FormatWriter]
    geometry: Callable[[ExportOptions], Geometry]
    reader: Callable[[str], Iterator[ImageLabels]]
    claims: Callable[[str], bool]
    pixel_centres: bool = False


def mask_object(rle: CocoRle, *, kind: ObjectKind = "mask", label: str = "object") -> LabelObject:
    """A label file's mask (or rasterized polygon) as a LabelObject with its COCO box."""
    return LabelObject(kind=kind, box_xywh=coco_box(rle), rle=rle, label=label)


def box_object(
    box_xywh: tuple[float, float, float, float], *, label: str = "object"
) -> LabelObject:
    return LabelObject(kind="box", box_xywh=tuple(float(v) for v in box_xywh), label=label)  # type: ignore[arg-type]


def resolve_image(label_path: str, name: str) -> str:
    """Where an image a label file names is: an absolute path or URL as it is, any other
    name relative to the label file's folder."""
    if "://" in name or posixpath.isabs(name):
        return name
    return posixpath.join(posixpath.dirname(label_path), name)
