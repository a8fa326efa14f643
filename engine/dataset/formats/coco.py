"""COCO instances JSON: `annotations.json` with one category, image entries whose
`file_name` is the image's path relative to the JSON's folder (`images/<name>`), and per
mask `segmentation` as compressed RLE (as SA-1B stores it: copied, not re-encoded) or, with
polygons, one polygon per part (holes cut in). `bbox` is COCO's [x, y, w, h] of the mask's
pixels, `area` its pixel count, `iscrowd` 0; SA-1B's other keys (predicted_iou,
stability_score, point_coords, crop_box) are kept.

Streamed: annotations are appended to the file as images come; the small image entries
are kept and written last (`images` follows `annotations` in the file).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from engine.dataset.formats import geometry
from engine.dataset.formats.records import (
    ExportImage,
    ExportOptions,
    Format,
    Geometry,
    ImageLabels,
    LabelObject,
    ObjectKind,
    box_object,
    mask_object,
    resolve_image,
)
from engine.dataset.formats.streams import JsonArrayFile, dumps

FILE_NAME = "annotations.json"
CATEGORY_ID = 1
COCO_KEYS = ("id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd")


class CocoWriter:
    def __init__(self, output: Path, options: ExportOptions, num_images: int) -> None:
        self.options = options
        header = {"info": {"description": "exported by saengine"}, "licenses": []}
        categories = [{"id": CATEGORY_ID, "name": options.category, "supercategory": "object"}]
        self.images: list[dict[str, Any]] = []
        self.file = JsonArrayFile(
            output / FILE_NAME,
            prefix=dumps(header)[:-1] + f',"categories":{dumps(categories)},"annotations":[',
        )

    def add(self, image: ExportImage) -> None:
        self.images.append(
            {
                "id": image.image_id,
                "file_name": f"images/{image.file_name}",
                "width": image.width,
                "height": image.height,
            }
        )
        for item in image.objects:
            annotation = item.annotation
            segmentation: Any = item.rle
            if self.options.polygons:
                segmentation = [p.reshape(-1).tolist() for p in item.polygons]
            x, y, w, h = geometry.coco_box(item.rle)
            self.file.append(
                {
                    "id": annotation["id"],
                    "image_id": image.image_id,
                    "category_id": CATEGORY_ID,
                    "segmentation": segmentation,
                    "bbox": [x, y, w, h],
                    "area": int(annotation["area"]),
                    "iscrowd": 0,
                    **{k: v for k, v in annotation.items() if k not in COCO_KEYS},
                }
            )

    def close(self) -> list[Path]:
        return [self.file.commit(suffix='],\n"images":' + dumps(self.images) + "}")]

    def abandon(self) -> None:
        self.file.abandon()


def geometry_of(options: ExportOptions) -> Geometry:
    return "parts" if options.polygons else "rle"


def read_coco(path: str) -> Iterator[ImageLabels]:
    """The images of a COCO instances JSON, each object a mask (RLE), a polygon (rasterized)
    or, without a segmentation, a box. Crowd regions (iscrowd 1) are skipped."""
    data = load_coco(path)
    categories = {c.get("id"): str(c.get("name", "object")) for c in data.get("categories", [])}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for annotation in data.get("annotations", []):
        by_image.setdefault(annotation.get("image_id"), []).append(annotation)
    for entry in data["images"]:
        height, width = int(entry.get("height", 0)), int(entry.get("width", 0))
        objects = []
        for annotation in by_image.get(entry["id"], []):
            if annotation.get("iscrowd", 0):
                continue
            label = categories.get(annotation.get("category_id"), "object")
            objects.append(_object(annotation, height=height, width=width, label=label))
        name = str(entry["file_name"])
        yield ImageLabels(
            file_name=name,
            image=resolve_image(path, name),
            width=width,
            height=height,
            objects=tuple(objects),
        )


def _object(annotation: dict[str, Any], *, height: int, width: int, label: str) -> LabelObject:
    where = f"annotation {annotation.get('id')}"
    segmentation = annotation.get("segmentation")
    try:
        if segmentation:
            if height <= 0 or width <= 0:
                raise ValueError("its image has no width/height")
            rle = geometry.to_rle(segmentation, height=height, width=width)
            kind: ObjectKind = "polygon" if isinstance(segmentation, list) else "mask"
            return mask_object(rle, kind=kind, label=label)
        x, y, w, h = (float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"COCO {where}: {error}") from error
    return box_object((x, y, w, h), label=label)


def load_coco(path: str) -> dict[str, Any]:
    """A COCO JSON file's content; a ValueError naming the file when it is not one."""
    with fsspec.open(path, "rt", encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except ValueError as error:
            raise ValueError(f"{path} is not JSON: {error}") from error
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(
        isinstance(i, dict) and "file_name" in i and "id" in i for i in images
    ):
        raise ValueError(f"{path} is not a COCO file (no images list with id and file_name)")
    return data


def claims(path: str) -> bool:
    return path.lower().endswith(".json") and _json_starts_with(path, "{")


def _json_starts_with(path: str, character: str) -> bool:
    with fsspec.open(path, "rt", encoding="utf-8") as handle:
        start = handle.read(256).lstrip()
    return start.startswith(character)


FORMAT = Format(
    name="coco",
    writer=CocoWriter,
    geometry=geometry_of,
    reader=read_coco,
    claims=claims,
)
