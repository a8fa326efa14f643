"""The verifier's examples: people's answers on proposed masks, one row each of a Parquet
file, with what the network needs (the mask, its numbers, where its image's embedding is)
and the part of the data it belongs to.

Each image's answers all go to one part (by a seeded hash of its key): train (what the
verifier learns from), calibrate (where its threshold is chosen) or test (where its
precision and recall are measured). An image keeps its part from round to round, so no
round ever trains on a later round's test answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.automatic.rle import coco_decode
from stages.verify import mask_frame, mask_scalars

TRAIN, CALIBRATE, TEST = "train", "calibrate", "test"
PARTS = (TRAIN, CALIBRATE, TEST)


@dataclass(frozen=True)
class VerifyExample:
    """One answer: key (the image's embedding key), image_id, mask_id; the mask (COCO
    counts at height x width, its area) and its scores; input_h, input_w: the unpadded
    model-input size of the image's embedding; label: 1 accepted, 0 rejected; part."""

    key: str
    image_id: int
    mask_id: int
    counts: str
    height: int
    width: int
    area: int
    predicted_iou: float | None
    stability_score: float | None
    input_h: int
    input_w: int
    label: int
    part: str

    def inputs(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """The network's mask (frame x frame) and scalars for this example."""
        mask = coco_decode({"size": [self.height, self.width], "counts": self.counts})
        size = (self.height, self.width)
        return (
            mask_frame(mask, input_hw=(self.input_h, self.input_w), frame=frame),
            mask_scalars(self.predicted_iou, self.stability_score, self.area, size),
        )


def part_of(key: str, *, seed: int, calibrate: float, test: float) -> str:
    """The part of an image's answers: test with chance `test`, calibrate with chance
    `calibrate`, else train (a seeded hash of the key, so always the same)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    return TEST if draw < test else CALIBRATE if draw < test + calibrate else TRAIN


def write_examples(path: str | Path, examples: list[VerifyExample]) -> None:
    names = [f.name for f in fields(VerifyExample)]
    columns = {name: [asdict(e)[name] for e in examples] for name in names}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial")
    pq.write_table(pa.table(columns), temporary)
    temporary.replace(target)


def read_examples(path: str | Path, part: str | None = None) -> list[VerifyExample]:
    """The examples of a file (of one part, if given), in file order."""
    rows = pq.read_table(path).to_pylist()
    return [VerifyExample(**row) for row in rows if part is None or row["part"] == part]


def examples_digest(examples: list[VerifyExample]) -> str:
    """SHA-256 over the examples' mask ids and labels: what a resumed run must see again."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(f"{example.mask_id}:{example.label};".encode())
    return digest.hexdigest()
