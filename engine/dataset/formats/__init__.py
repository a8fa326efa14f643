"""Other tools' label formats: SA-1B datasets exported to them, their label files read.

- `records`: what writers take (`ExportImage`) and readers give (`ImageLabels`), and
  `Format`, a registry entry;
- `geometry`: COCO RLE, masks traced into polygons (holes and parts kept), the IoU lost;
- one module per format: `coco`, `yolo`, `cvat`, `labelstudio` (writer and reader);
- `export`: the streamed exporter (images one at a time, polygons and their IoU);
- `command`: `saengine export <dataset> format=... output=...`.

A new format is one module defining its `FORMAT` and one line in `FORMATS` below.
"""

from __future__ import annotations

from collections.abc import Iterator

from engine.dataset.formats import coco, cvat, labelstudio, yolo
from engine.dataset.formats.records import Format, ImageLabels

FORMATS: dict[str, Format] = {
    "coco": coco.FORMAT,
    "yolo-seg": yolo.FORMAT,
    "cvat": cvat.FORMAT,
    "labelstudio": labelstudio.FORMAT,
}


def get_format(name: str) -> Format:
    """The registered format `name`; a ValueError listing the formats otherwise."""
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def detect_format(path: str) -> str:
    """The name of the format a label file or folder is in (COCO JSON, Label Studio JSON,
    CVAT XML, YOLO folder); a ValueError when none claims it."""
    for name, entry in FORMATS.items():
        try:
            if entry.claims(path):
                return name
        except (OSError, UnicodeDecodeError):
            continue
    raise ValueError(
        f"{path}: not a label file this engine reads (a COCO or Label Studio .json, "
        "a CVAT .xml or a YOLO folder with labels/)"
    )


def read_labels(path: str, format: str | None = None) -> Iterator[ImageLabels]:
    """The images of a label file or folder, in the given or detected format."""
    return get_format(format or detect_format(path)).reader(path)


__all__ = ["FORMATS", "Format", "ImageLabels", "detect_format", "get_format", "read_labels"]
