"""Campaigns started from existing labels (`campaign create ... labels=`), the way users do
it: an SA-1B dataset exported to COCO with `saengine export`, a campaign created on the
images that file lists with the file as its labels. Masks become prefilled masks that come
back unchanged through `campaign export`; boxes become one SAM mask each in the prefill
job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from engine.campaigns.campaign import Campaign
from engine.campaigns.queue import end_lease, lease_next
from engine.dataset.reader import build_index
from engine.training.synthetic import SceneOptions, write_synthetic_dataset
from tests.engine.campaigns.campaignrun import create, query
from tests.engine.jobrun import run_saengine

SCENES = SceneOptions(size=160, objects=(2, 4), min_area=300, part_probability=0.3)


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic scenes exported to COCO (RLE): annotations.json beside images/."""
    root = tmp_path_factory.mktemp("labels")
    write_synthetic_dataset(str(root / "scenes"), num_images=4, options=SCENES, seed=5)
    result = run_saengine("export", str(root / "scenes"), "format=coco", f"output={root / 'coco'}")
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "coco" / "annotations.json"


def _masks_by_file(annotations: list[dict], images: list[dict]) -> dict[str, list[np.ndarray]]:
    names = {image["id"]: image["file_name"] for image in images}
    found: dict[str, list[np.ndarray]] = {}
    for annotation in annotations:
        mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
        found.setdefault(Path(names[annotation["image_id"]]).name, []).append(mask)
    return found


def _finish_every_image(folder: Path) -> None:
    """An annotator finishes each image without changing anything: its prefilled masks
    are kept."""
    campaign = Campaign(folder)
    annotator = query(folder, "SELECT annotator_id FROM annotators")[0][0]
    while (lease := lease_next(campaign, annotator)) is not None:
        end_lease(campaign, lease.lease_id, annotator, finish=True, client_id=None)


def test_coco_masks_become_prefilled_and_export_unchanged(coco: Path, tmp_path: Path) -> None:
    folder = tmp_path / "campaign"
    create(folder, f"input={coco}", f"labels={coco}", "model=bundled", "onnx.quantize=false")
    expected = json.loads(coco.read_text())
    stages = query(folder, "SELECT DISTINCT stage, prefill_model FROM images")
    assert stages == [(2, "labels")]  # every image labelled: stage 2, prefilled from the file
    prefilled = query(folder, "SELECT COUNT(*) FROM masks WHERE origin = 'prefilled'")[0][0]
    assert prefilled == len(expected["annotations"])

    _finish_every_image(folder)
    exported = run_saengine("campaign", "export", str(folder), f"output={tmp_path / 'out'}")
    assert exported.returncode == 0, exported.stderr[-2000:]
    truth = _masks_by_file(expected["annotations"], expected["images"])
    sources = dict(query(folder, "SELECT key, source FROM images"))
    for entry in build_index([str(tmp_path / "out")]):
        record = json.loads(entry.annotations.read_bytes({}))
        masks = [mask_utils.decode(a["segmentation"]).astype(bool) for a in record["annotations"]]
        wanted = truth[Path(sources[entry.key]).name]
        assert len(masks) == len(wanted)
        assert all(any(np.array_equal(m, w) for w in wanted) for m in masks), entry.key


def test_coco_boxes_go_through_sam_one_mask_each(coco: Path, tmp_path: Path) -> None:
    boxes_only = json.loads(coco.read_text())
    for annotation in boxes_only["annotations"]:
        del annotation["segmentation"]
    labels = coco.parent / "boxes.json"
    labels.write_text(json.dumps(boxes_only))
    folder = tmp_path / "campaign"
    create(folder, f"input={coco}", f"labels={labels}", "model=bundled", "onnx.quantize=false")
    assert query(folder, "SELECT COUNT(*) FROM label_boxes")[0][0] == len(boxes_only["annotations"])
    assert query(folder, "SELECT COUNT(*) FROM images WHERE prefill_model IS NULL")[0][0] == 4

    # No detector is needed: every waiting image has its boxes.
    result = run_saengine("campaign", "prefill", str(folder), "progress=false", "ray.num_cpus=2")
    assert result.returncode == 0, result.stderr[-3000:]
    per_image = dict(query(folder, "SELECT image_id, COUNT(*) FROM label_boxes GROUP BY image_id"))
    masks = dict(
        query(
            folder,
            "SELECT image_id, COUNT(*) FROM masks WHERE origin = 'prefilled' "
            "AND detector_sha256 = 'labels' GROUP BY image_id",
        )
    )
    assert masks == per_image  # every box became a mask
    assert query(folder, "SELECT COUNT(*) FROM images WHERE prefill_model IS NULL")[0][0] == 0
    assert query(folder, "SELECT COUNT(*) FROM embeddings")[0][0] == 4
