"""Label Studio tasks JSON (`tasks.json`, imported as pre-annotations or annotations) with
`labeling_config.xml`, the project's labeling interface, beside it.

Each image is a task `{"data": {"image": <url>}, "predictions": [{"result": [...]}]}` (or
"annotations"), each mask one result: `brushlabels` with Label Studio's brush RLE, or, with
polygons, `polygonlabels` whose points are percentages of the image's width and height (one
ring per object: parts and holes joined by zero-width cuts). Coordinates and sizes follow
Label Studio's result format (`original_width`, `original_height`, `image_rotation`).

Label Studio's brush RLE (its front end's run-length packer): a bit stream, most
significant bit first, of the mask as RGBA bytes (4 per pixel, row by row):
- 32 bits: the number of bytes; 5 bits: bits per value - 1 (7); 4 x 4 bits: the widths - 1
  of the four run-length classes (3, 4, 8, 16 bits);
- then per run: 1 bit (1: a repeated value), 2 bits: its class, the run length - 1 in that
  class's width, the value in 8 bits; or per literal chunk: 0, 2 bits: class, the chunk's
  length - 1, then its values.
Written here with repeated runs only (every pixel is 4 equal bytes); read with both kinds.

Read: tasks with `brushlabels`, `polygonlabels` (masks) and `rectanglelabels` (boxes)
results, from the task's first annotation, else its first prediction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

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
    resolve_image,
)
from engine.dataset.formats.streams import JsonArrayFile, StreamedFile

FILE_NAME = "tasks.json"
CONFIG_FILE = "labeling_config.xml"
FROM_NAME, TO_NAME = "label", "image"
RUN_BITS = (3, 4, 8, 16)  # the run-length classes' widths
VALUE_BITS = 8
HEADER_BITS = 32 + 5 + 4 * len(RUN_BITS)
MAX_RUN = 1 << RUN_BITS[-1]


class LabelStudioWriter:
    def __init__(self, output: Path, options: ExportOptions, num_images: int) -> None:
        self.output = output
        self.options = options
        self.file = JsonArrayFile(output / FILE_NAME)

    def add(self, image: ExportImage) -> None:
        results = [
            self._result(image, item.annotation, item.polygons, number)
            for number, item in enumerate(image.objects)
        ]
        scores = [float(item.annotation.get("predicted_iou", 1.0)) for item in image.objects]
        entry: dict[str, Any] = {"result": [r for r in results if r is not None]}
        if self.options.labelstudio_target == "predictions":
            entry = {"model_version": "saengine", "score": float(np.mean(scores or [1.0])), **entry}
        url = self.options.labelstudio_image_url.format(file_name=image.file_name)
        self.file.append(
            {
                "data": {"image": url, "image_id": image.image_id},
                self.options.labelstudio_target: [entry],
            }
        )

    def _result(
        self,
        image: ExportImage,
        annotation: dict[str, Any],
        polygons: list[np.ndarray],
        number: int,
    ) -> dict[str, Any] | None:
        label = [self.options.category]
        if self.options.polygons:
            if not polygons:
                return None
            points = (polygons[0] / [image.width, image.height] * 100).round(4).tolist()
            kind, value = (
                "polygonlabels",
                {"points": points, "closed": True, "polygonlabels": label},
            )
        else:
            rle = brush_encode(geometry.decode(annotation["segmentation"]))
            kind, value = "brushlabels", {"format": "rle", "rle": rle, "brushlabels": label}
        result = {
            "id": f"{image.image_id}_{number}",
            "type": kind,
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "original_width": image.width,
            "original_height": image.height,
            "image_rotation": 0,
            "value": value,
        }
        if "predicted_iou" in annotation:
            result["score"] = float(annotation["predicted_iou"])
        return result

    def close(self) -> list[Path]:
        tag = "PolygonLabels" if self.options.polygons else "BrushLabels"
        config = StreamedFile(self.output / CONFIG_FILE)
        config.write(
            "<View>\n"
            f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
            f'  <{tag} name="{FROM_NAME}" toName="{TO_NAME}">\n'
            f'    <Label value="{self.options.category}"/>\n'
            f"  </{tag}>\n"
            "</View>\n"
        )
        return [self.file.commit(), config.commit()]

    def abandon(self) -> None:
        self.file.abandon()


def geometry_of(options: ExportOptions) -> Geometry:
    return "single" if options.polygons else "rle"


def brush_encode(mask: np.ndarray) -> list[int]:
    """H x W {0, 1} -> Label Studio's brush RLE (a list of byte values)."""
    flat = mask.reshape(-1).astype(np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1))
    lengths = np.diff(np.concatenate((starts, [flat.size]))) * 4  # 4 bytes a pixel
    values = flat[starts].astype(np.int64) * 255
    pieces = -(-lengths // MAX_RUN)  # runs longer than the widest class are split
    values = np.repeat(values, pieces)
    piece_lengths = np.full(int(pieces.sum()), MAX_RUN, dtype=np.int64)
    piece_lengths[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * MAX_RUN
    repeats = piece_lengths - 1
    classes = np.searchsorted(1 << np.array(RUN_BITS), repeats, side="right")
    widths = np.array(RUN_BITS)[classes]
    codes = (((1 << 2 | classes) << widths | repeats) << VALUE_BITS) | values
    header = (flat.size * 4) << 21 | (VALUE_BITS - 1) << 16
    for index, width in enumerate(RUN_BITS):
        header |= (width - 1) << (12 - 4 * index)
    bits = _bits(np.concatenate(([header], codes)), np.concatenate(([HEADER_BITS], widths + 11)))
    return np.packbits(bits).tolist()


def _bits(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each code's `length` low bits, most significant first, all concatenated."""
    ends = np.cumsum(lengths)
    position = np.arange(int(ends[-1])) - np.repeat(ends - lengths, lengths)
    shift = np.repeat(lengths, lengths) - 1 - position
    return ((np.repeat(codes, lengths) >> shift) & 1).astype(np.uint8)


def brush_decode(rle: list[int], *, height: int, width: int) -> np.ndarray:
    """Label Studio's brush RLE -> H x W uint8 {0, 1} (the alpha byte of each pixel)."""
    reader = _BitReader(np.unpackbits(np.asarray(rle, dtype=np.uint8)))
    total, value_bits = reader.take(32), reader.take(5) + 1
    widths = [reader.take(4) + 1 for _ in RUN_BITS]
    if total != height * width * 4:
        raise ValueError(f"brush RLE holds {total} bytes, not {height} x {width} x 4")
    out = np.zeros(total, dtype=np.int64)
    filled = 0
    while filled < total:
        repeated, width_bits = reader.take(1), widths[reader.take(2)]
        count = reader.take(width_bits) + 1
        if repeated:
            out[filled : filled + count] = reader.take(value_bits)
        else:
            out[filled : filled + count] = reader.take_many(count, value_bits)
        filled += count
    return (out.reshape(height, width, 4)[:, :, 3] > 0).astype(np.uint8)


class _BitReader:
    def __init__(self, bits: np.ndarray) -> None:
        self.bits = bits
        self.position = 0

    def take(self, count: int) -> int:
        chunk = self.bits[self.position : self.position + count]
        if len(chunk) < count:
            raise ValueError("brush RLE ends early")
        self.position += count
        return int(chunk.dot(1 << np.arange(count - 1, -1, -1, dtype=np.int64)))

    def take_many(self, number: int, count: int) -> np.ndarray:
        chunk = self.bits[self.position : self.position + number * count]
        if len(chunk) < number * count:
            raise ValueError("brush RLE ends early")
        self.position += number * count
        return chunk.reshape(number, count).dot(1 << np.arange(count - 1, -1, -1, dtype=np.int64))


def read_labelstudio(path: str) -> Iterator[ImageLabels]:
    """The tasks of a Label Studio JSON export (a list of tasks, or one task)."""
    with fsspec.open(path, "rt", encoding="utf-8") as handle:
        try:
            tasks = json.load(handle)
        except ValueError as error:
            raise ValueError(f"{path} is not JSON: {error}") from error
    for number, task in enumerate(tasks if isinstance(tasks, list) else [tasks]):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise ValueError(f"{path}: task {number} is not a Label Studio task (no data)")
        yield _task(task, f"{path}: task {task.get('id', number)}", path)


def _task(task: dict[str, Any], where: str, path: str) -> ImageLabels:
    data = task["data"]
    name = str(data.get("image") or next(iter(data.values()), ""))
    results = _results(task)
    sized = [r for r in results if "original_height" in r and "original_width" in r]
    height = int(sized[0]["original_height"]) if sized else 0
    width = int(sized[0]["original_width"]) if sized else 0
    objects = []
    for result in results:
        try:
            item = _object(result, height=height, width=width)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: result {result.get('id')}: {error}") from error
        if item is not None:
            objects.append(item)
    return ImageLabels(
        file_name=name,
        image=resolve_image(path, name),
        width=width,
        height=height,
        objects=tuple(objects),
    )


def _results(task: dict[str, Any]) -> list[dict[str, Any]]:
    for key in ("annotations", "completions", "predictions"):
        entries = [e for e in task.get(key) or [] if not e.get("was_cancelled")]
        if entries:
            return list(entries[0].get("result") or [])
    return []


def _object(result: dict[str, Any], *, height: int, width: int) -> LabelObject | None:
    kind, value = result.get("type"), result.get("value", {})
    labels = value.get(str(kind)) or ["object"]
    scale = np.array([width, height], dtype=float) / 100
    if kind == "brushlabels":
        mask = brush_decode(value["rle"], height=height, width=width)
        return mask_object(geometry.encode(mask), label=labels[0])
    if kind == "polygonlabels":
        polygon = np.asarray(value["points"], dtype=float).reshape(-1, 2) * scale
        rle = geometry.polygons_to_rle([polygon], height=height, width=width)
        return mask_object(rle, kind="polygon", label=labels[0])
    if kind == "rectanglelabels":
        if float(value.get("rotation", 0)):
            raise ValueError("rotated rectangles are not supported")
        x, y = np.array([value["x"], value["y"]], dtype=float) * scale
        w, h = np.array([value["width"], value["height"]], dtype=float) * scale
        return box_object((x, y, w, h), label=labels[0])
    return None


def claims(path: str) -> bool:
    if not path.lower().endswith(".json"):
        return False
    with fsspec.open(path, "rt", encoding="utf-8") as handle:
        return handle.read(256).lstrip().startswith("[")


FORMAT = Format(
    name="labelstudio",
    writer=LabelStudioWriter,
    geometry=geometry_of,
    reader=read_labelstudio,
    claims=claims,
)
