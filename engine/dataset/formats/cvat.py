"""CVAT for images 1.1 XML (`annotations.xml`, the file CVAT's "CVAT 1.1" importer takes,
alone or zipped with images/): `<meta>` with the task's one label, then per image
`<image id name width height>` holding one `<mask>` per mask, or with polygons one
`<polygon>` per part (the parts of one mask share a `group_id`).

CVAT's mask RLE: the mask cropped to its box (`left`, `top`, `width`, `height`, the box
inclusive of its last pixel), read row by row, as comma-separated lengths of alternating
runs starting with a background run.

Read: `<box>`, `<polygon>` and `<mask>` of every image (shapes sharing a non-zero
group_id become one object, as the writer groups a mask's parts); other shapes are skipped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import fsspec
import numpy as np
from fsspec.core import url_to_fs
from pycocotools import mask as mask_utils

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
from engine.dataset.formats.streams import StreamedFile

FILE_NAME = "annotations.xml"
SOURCE = "auto"  # CVAT's name for shapes made by a model


class CvatWriter:
    def __init__(self, output: Path, options: ExportOptions, num_images: int) -> None:
        self.options = options
        self.next_id = 0
        self.file = StreamedFile(output / FILE_NAME)
        label = escape(options.category)
        self.file.write(
            '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n'
            "  <meta>\n    <task>\n      <name>saengine export</name>\n"
            f"      <size>{num_images}</size>\n      <mode>annotation</mode>\n"
            "      <overlap>0</overlap>\n      <labels>\n        <label>\n"
            f"          <name>{label}</name>\n          <type>any</type>\n"
            "          <attributes></attributes>\n        </label>\n      </labels>\n"
            "    </task>\n  </meta>\n"
        )

    def add(self, image: ExportImage) -> None:
        self.file.write(
            f'  <image id="{self.next_id}" name={quoteattr(image.file_name)} '
            f'width="{image.width}" height="{image.height}">\n'
        )
        self.next_id += 1
        label = quoteattr(self.options.category)
        common = f'label={label} source="{SOURCE}" occluded="0" z_order="0"'
        for number, item in enumerate(image.objects, 1):
            if not self.options.polygons:
                rle, left, top, width, height = cvat_rle(geometry.decode(item.rle))
                self.file.write(
                    f'    <mask {common} rle="{rle}" left="{left}" top="{top}" '
                    f'width="{width}" height="{height}"></mask>\n'
                )
                continue
            group = f' group_id="{number}"' if len(item.polygons) > 1 else ""
            for polygon in item.polygons:
                points = ";".join(f"{x:.2f},{y:.2f}" for x, y in polygon)
                self.file.write(f'    <polygon {common} points="{points}"{group}></polygon>\n')
        self.file.write("  </image>\n")

    def close(self) -> list[Path]:
        self.file.write("</annotations>\n")
        return [self.file.commit()]

    def abandon(self) -> None:
        self.file.abandon()


def geometry_of(options: ExportOptions) -> Geometry:
    return "parts" if options.polygons else "rle"


def cvat_rle(mask: np.ndarray) -> tuple[str, int, int, int, int]:
    """H x W {0, 1} (not empty) -> (CVAT rle text, left, top, width, height)."""
    ys, xs = np.nonzero(mask)
    left, top = int(xs.min()), int(ys.min())
    width, height = int(xs.max()) - left + 1, int(ys.max()) - top + 1
    crop = mask[top : top + height, left : left + width].reshape(-1).astype(np.int8)
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(crop)) + 1, [crop.size]))
    runs = np.diff(bounds).tolist()
    if crop[0]:
        runs = [0, *runs]
    return ",".join(str(r) for r in runs), left, top, width, height


def cvat_mask(
    rle: str, *, left: int, top: int, width: int, height: int, size: tuple[int, int]
) -> np.ndarray:
    """A CVAT mask element's RLE -> H x W uint8 mask of the image (`size` = (H, W))."""
    runs = np.array([int(v) for v in rle.split(",")], dtype=np.int64)
    if (runs < 0).any() or runs.sum() != width * height:
        raise ValueError(f"mask rle covers {runs.sum()} pixels, not {width} x {height}")
    values = (np.arange(len(runs)) % 2).astype(np.uint8)
    crop = np.repeat(values, runs).reshape(height, width)
    mask = np.zeros(size, dtype=np.uint8)
    bottom, right = min(top + height, size[0]), min(left + width, size[1])
    mask[top:bottom, left:right] = crop[: bottom - top, : right - left]
    return mask


def read_cvat(path: str) -> Iterator[ImageLabels]:
    """The images of a CVAT for images XML file, streamed (one image element at a time)."""
    with fsspec.open(path, "rb") as handle:
        try:
            for _, element in ElementTree.iterparse(handle, events=("end",)):
                if element.tag == "image":
                    yield _image(element, path)
                    element.clear()
        except ElementTree.ParseError as error:
            raise ValueError(f"{path} is not CVAT XML: {error}") from error


def _image(element: ElementTree.Element, path: str) -> ImageLabels:
    name = element.get("name", "")
    try:
        width, height = int(element.get("width", "")), int(element.get("height", ""))
        # Objects in file order; a group's shapes become one object where its first one is.
        shapes: list[list[tuple[str, LabelObject]]] = []
        groups: dict[str, list[tuple[str, LabelObject]]] = {}
        for shape in element:
            item = _shape(shape, height=height, width=width)
            if item is None:
                continue
            group = shape.get("group_id", "0")
            if group == "0" or f"{item.label}\0{group}" not in groups:
                shapes.append([(shape.tag, item)])
                if group != "0":
                    groups[f"{item.label}\0{group}"] = shapes[-1]
            else:
                groups[f"{item.label}\0{group}"].append((shape.tag, item))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: image {name!r}: {error}") from error
    return ImageLabels(
        file_name=name,
        image=_image_location(path, name),
        width=width,
        height=height,
        objects=tuple(_merged(members, height=height, width=width) for members in shapes),
    )


def _shape(shape: ElementTree.Element, *, height: int, width: int) -> LabelObject | None:
    label = shape.get("label", "object")
    if shape.tag == "box":
        xtl, ytl, xbr, ybr = (float(shape.get(k, "")) for k in ("xtl", "ytl", "xbr", "ybr"))
        return box_object((xtl, ytl, xbr - xtl, ybr - ytl), label=label)
    if shape.tag in ("polygon", "mask"):
        rle = _shape_rle(shape, height=height, width=width)
        return mask_object(rle, kind=_kind(shape.tag), label=label)
    return None  # polylines, points, tags, ...


def _merged(members: list[tuple[str, LabelObject]], *, height: int, width: int) -> LabelObject:
    """The shapes of one group as one object: the union of its masks (its first box if it
    has no mask)."""
    rles = [item.rle for _, item in members if item.rle is not None]
    if len(members) == 1 or not rles:
        return members[0][1]
    merged = mask_utils.merge([geometry.native(r) for r in rles])
    rle = {"size": [height, width], "counts": merged["counts"].decode()}
    kind: ObjectKind = "mask" if all(tag == "mask" for tag, _ in members) else "polygon"
    return mask_object(rle, kind=kind, label=members[0][1].label)


def _image_location(path: str, name: str) -> str:
    """CVAT names images as uploaded: in images/ beside the XML (CVAT's own export), else
    beside the XML."""
    inside = resolve_image(path, f"images/{name}")
    fs, local = url_to_fs(inside)
    return inside if fs.exists(local) else resolve_image(path, name)


def _kind(tag: str) -> ObjectKind:
    return "mask" if tag == "mask" else "polygon"


def _shape_rle(shape: ElementTree.Element, *, height: int, width: int) -> geometry.CocoRle:
    if shape.tag == "polygon":
        pairs = [p.split(",") for p in shape.get("points", "").split(";") if p]
        polygon = np.array([[float(x), float(y)] for x, y in pairs])
        return geometry.polygons_to_rle([polygon], height=height, width=width)
    box = {k: int(float(shape.get(k, ""))) for k in ("left", "top", "width", "height")}
    mask = cvat_mask(shape.get("rle", ""), **box, size=(height, width))
    return geometry.encode(mask)


def claims(path: str) -> bool:
    return path.lower().endswith(".xml")


FORMAT = Format(
    name="cvat",
    writer=CvatWriter,
    geometry=geometry_of,
    reader=read_cvat,
    claims=claims,
)
