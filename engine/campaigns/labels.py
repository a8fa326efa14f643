"""A campaign started from labels a team already has (`campaign create ... labels=<file>`):
COCO JSON, a YOLO-seg folder, CVAT XML or Label Studio JSON, read by
`engine.dataset.formats.read_labels`.

Each labelled image is matched to a campaign image by its path (or, failing that, by its
file name when only one campaign image has it) and moves to stage 2, so annotators start
from its labels and add what is missing. Masks and polygons become prefilled masks at once
(scaled to the stored image when that was downsized). Boxes wait in `label_boxes` for the
prefill job, where SAM turns each into one mask with the box as its prompt (the stage-2 path
without a detector); the image is leased once that is done. What came from the label file is
marked `labels` where a detector's SHA-256 would be. The import is one transaction, done
once per campaign (a rerun of `create` does not import again).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from engine.campaigns.campaign import Campaign
from engine.campaigns.db import read_meta, write_meta
from engine.campaigns.errors import CampaignError
from engine.campaigns.masks import insert_prefilled, mask_shape
from engine.campaigns.queue import mark_prefilled
from engine.campaigns.state import ImageStatus, Stage
from engine.campaigns.versions import current_model
from engine.dataset.formats import ImageLabels, read_labels
from engine.dataset.formats.geometry import decode
from engine.errors import first_line

LABELS_MARK = "labels"  # in place of a detector's SHA-256: made from the label file
IMPORTED_META = "labels_imported"


@dataclass
class LabelImport:
    """What an import did: images matched, prefilled masks stored, boxes waiting for SAM,
    and the file names of labelled images the campaign does not hold."""

    images: int = 0
    masks: int = 0
    boxes: int = 0
    unmatched: list[str] = field(default_factory=list)


def import_labels(
    campaign: Campaign, path: str, *, format: str | None = None, progress: bool = True
) -> LabelImport:
    """Import the label file into the campaign (see the module docstring)."""
    report = LabelImport()
    with campaign.db.write() as db:
        if read_meta(db, IMPORTED_META) is not None:
            return LabelImport(**json.loads(str(read_meta(db, IMPORTED_META))))
        model = current_model(db)
        assert model is not None, "the campaign's model is published before its labels"
        match = _Matcher(db.execute("SELECT * FROM images").fetchall())
        for labels in tqdm(_read(path, format), desc="labels", unit="img", disable=not progress):
            row = match(labels)
            if row is None:
                report.unmatched.append(labels.file_name)
            elif row["status"] == ImageStatus.QUEUED and labels.objects:
                _import_image(db, row, labels, model, report)
        write_meta(db, IMPORTED_META, json.dumps(report.__dict__))
    return report


def _read(path: str, format: str | None) -> Iterable[ImageLabels]:
    """The label file's images; a one-line CampaignError for a file that cannot be read."""
    try:
        yield from read_labels(path, format)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CampaignError(f"labels {path}: {first_line(error)}") from error


class _Matcher:
    """A labelled image -> the campaign's image row: the same file (resolved path or
    URL), else the one campaign image with the same file name."""

    def __init__(self, rows: list[sqlite3.Row]) -> None:
        self.by_path = {_resolved(row["source"]): row for row in rows}
        by_name: dict[str, list[sqlite3.Row]] = {}
        for row in rows:
            by_name.setdefault(os.path.basename(row["source"]), []).append(row)
        self.by_name = {name: found[0] for name, found in by_name.items() if len(found) == 1}

    def __call__(self, labels: ImageLabels) -> sqlite3.Row | None:
        row = self.by_path.get(_resolved(labels.image))
        return row if row is not None else self.by_name.get(os.path.basename(labels.file_name))


def _resolved(path: str) -> str:
    return path if "://" in path else os.path.realpath(path)


def _import_image(
    db: sqlite3.Connection,
    row: sqlite3.Row,
    labels: ImageLabels,
    model_sha256: str,
    report: LabelImport,
) -> None:
    image_id, height, width = row["image_id"], row["height"], row["width"]
    scale_x = width / labels.width if labels.width else 1.0
    scale_y = height / labels.height if labels.height else 1.0
    boxes = []
    for item in labels.objects:
        if item.rle is None:
            x, y, w, h = item.box_xywh
            box = [x * scale_x, y * scale_y, (x + w) * scale_x, (y + h) * scale_y]
            boxes.append(box)
            db.execute(
                "INSERT INTO label_boxes (image_id, box, label) VALUES (?, ?, ?)",
                (image_id, json.dumps(box), item.label),
            )
            continue
        mask = _stored_mask(decode(item.rle), height=height, width=width)
        if mask.any():
            insert_prefilled(
                db,
                image_id,
                _mask_row(mask),
                model_sha256=model_sha256,
                detector_sha256=LABELS_MARK,
            )
            report.masks += 1
    db.execute("UPDATE images SET stage = ? WHERE image_id = ?", (Stage.SEMI, image_id))
    if not boxes:
        mark_prefilled(db, image_id, LABELS_MARK)
    report.images += 1
    report.boxes += len(boxes)


def _stored_mask(mask: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """The label's mask at the stored image's size (nearest neighbour when it differs)."""
    if mask.shape == (height, width):
        return mask.astype(bool)
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


def _mask_row(mask: np.ndarray) -> dict[str, Any]:
    shape = mask_shape(mask)
    x, y, w, h = shape.bbox
    return {
        **shape.__dict__,
        "box": [float(x), float(y), float(x + w), float(y + h)],
        "detector_score": None,
        "predicted_iou": None,
        "stability_score": None,
    }


def label_boxes(db: sqlite3.Connection, image_ids: Iterable[int]) -> dict[int, list[list[float]]]:
    """The imported boxes (XYXY, stored image pixels) of those images that have any."""
    wanted = list(image_ids)
    found: dict[int, list[list[float]]] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        query = f"SELECT image_id, box FROM label_boxes WHERE image_id IN ({marks}) ORDER BY rowid"
        for row in db.execute(query, chunk):
            found.setdefault(row["image_id"], []).append(json.loads(row["box"]))
    return found


def boxes_waiting(db: sqlite3.Connection) -> bool:
    """Whether some image still waits for SAM to turn its imported boxes into masks."""
    query = (
        "SELECT 1 FROM label_boxes b JOIN images i ON i.image_id = b.image_id "
        "WHERE i.prefill_model IS NULL AND i.status = ? LIMIT 1"
    )
    return db.execute(query, (ImageStatus.QUEUED,)).fetchone() is not None
