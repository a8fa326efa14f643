"""YOLO segmentation labels (Ultralytics' layout): `images/<name>.jpg` beside
`labels/<name>.txt`, one line per object, `<class> x1 y1 x2 y2 ...` with coordinates divided
by the image's width and height, and `data.yaml` naming the one class. A line holds one
polygon, so an object's parts and holes are joined into one ring by zero-width cuts.
Coordinates are pixel centres, as YOLO's tools fill polygons (OpenCV): holes come back
exactly, a cut between two parts fills the pixels it crosses (in the reported IoU).

Read: a folder holding images/ and labels/ (or the labels beside the images); lines of
class + 4 numbers are boxes (centre x, centre y, width, height), longer ones polygons.
Image sizes are read from the image files' headers.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import yaml
from fsspec.core import url_to_fs
from PIL import Image

from engine.dataset.formats import geometry
from engine.dataset.formats.records import (
    ExportImage,
    ExportOptions,
    Format,
    Geometry,
    ImageLabels,
    LabelObject,
    box_object,
    mask_object,
)
from engine.dataset.formats.streams import StreamedFile
from engine.sources import IMAGE_EXTENSIONS

LABELS_DIR = "labels"
DATA_FILE = "data.yaml"
DECIMALS = 6


class YoloSegWriter:
    def __init__(self, output: Path, options: ExportOptions, num_images: int) -> None:
        self.output = output
        self.options = options
        (output / LABELS_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, image: ExportImage) -> None:
        scale = np.array([image.width, image.height], dtype=float)
        lines = []
        for item in image.objects:
            for polygon in item.polygons:
                coordinates = (polygon / scale).clip(0, 1).reshape(-1)
                lines.append("0 " + " ".join(f"{v:.{DECIMALS}f}" for v in coordinates))
        stem = posixpath.splitext(image.file_name)[0]
        # One small file per image, written as a whole (data.yaml, last, marks the end).
        label = self.output / LABELS_DIR / f"{stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{line}\n" for line in lines))

    def close(self) -> list[Path]:
        data = StreamedFile(self.output / DATA_FILE)
        data.write(
            "# YOLO segmentation dataset exported by saengine\n"
            f"path: {self.output.resolve()}\n"
            "train: images\n"
            "val: images\n"
            f"names:\n  0: {self.options.category}\n"
        )
        return [self.output / LABELS_DIR, data.commit()]

    def abandon(self) -> None:
        pass  # label files are whole; data.yaml, written last, marks a finished export


def geometry_of(options: ExportOptions) -> Geometry:
    return "single"


def read_yolo(path: str) -> Iterator[ImageLabels]:
    """The images of a YOLO folder (images/ and labels/, or labels beside the images), in
    name order; an image without a label file has no objects."""
    fs, root = url_to_fs(path)
    images_root = (
        posixpath.join(root, "images") if fs.isdir(posixpath.join(root, "images")) else root
    )
    names = sorted(n for n in fs.find(images_root) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"no images in the YOLO folder {path}")
    category = _class_names(fs, root)
    for name in names:
        image = name if fs.protocol in ("file", ("file", "local")) else fs.unstrip_protocol(name)
        with fsspec.open(image, "rb") as handle:
            width, height = Image.open(handle).size
        label = _label_path(name, images_root, root)
        objects: tuple[LabelObject, ...] = ()
        if fs.exists(label):
            with fs.open(label, "rt") as handle:
                lines = handle.read().splitlines()
            objects = tuple(
                _object(line, width=width, height=height, names=category, where=f"{label}:{n}")
                for n, line in enumerate(lines, 1)
                if line.strip()
            )
        yield ImageLabels(
            file_name=posixpath.relpath(name, root),
            image=image,
            width=width,
            height=height,
            objects=objects,
        )


def _label_path(image: str, images_root: str, root: str) -> str:
    stem = posixpath.splitext(posixpath.relpath(image, images_root))[0]
    if images_root != root:
        return posixpath.join(root, LABELS_DIR, f"{stem}.txt")
    return posixpath.join(root, f"{stem}.txt")


def _class_names(fs: Any, root: str) -> dict[int, str]:
    """Class id -> name from data.yaml's `names` (a list or a mapping), if there is one."""
    data_path = posixpath.join(root, DATA_FILE)
    if not fs.exists(data_path):
        return {}
    with fs.open(data_path, "rt") as handle:
        data = yaml.safe_load(handle) or {}
    names = data.get("names", {}) if isinstance(data, dict) else {}
    if isinstance(names, list):
        return dict(enumerate(str(n) for n in names))
    return {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}


def _object(
    line: str, *, width: int, height: int, names: dict[int, str], where: str
) -> LabelObject:
    try:
        values = [float(v) for v in line.split()]
        class_id, numbers = int(values[0]), np.array(values[1:])
    except (ValueError, IndexError) as error:
        raise ValueError(f"{where}: not a YOLO line: {line[:60]!r}") from error
    label = names.get(class_id, str(class_id))
    scale = np.array([width, height], dtype=float)
    if len(numbers) == 4:
        (cx, cy), (w, h) = numbers[:2] * scale, numbers[2:] * scale
        return box_object((cx - w / 2, cy - h / 2, w, h), label=label)
    if len(numbers) < 6 or len(numbers) % 2:
        raise ValueError(f"{where}: a polygon needs 3 or more x y pairs, got {len(numbers)} values")
    polygon = numbers.reshape(-1, 2) * scale
    rle = geometry.rasterize([polygon], height=height, width=width, centres=True)
    return mask_object(rle, kind="polygon", label=label)


def claims(path: str) -> bool:
    fs, root = url_to_fs(path)
    return bool(fs.isdir(root)) and (
        fs.exists(posixpath.join(root, LABELS_DIR)) or fs.exists(posixpath.join(root, DATA_FILE))
    )


FORMAT = Format(
    name="yolo-seg",
    writer=YoloSegWriter,
    geometry=geometry_of,
    reader=read_yolo,
    claims=claims,
    pixel_centres=True,
)
