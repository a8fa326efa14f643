"""The campaign's queue and mask store on a real SQLite database: leases, expiry, skip and
finish, idempotent submissions, and the checks that refuse bad masks."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.campaigns.auth import ADMIN, add_annotator, authenticate
from engine.campaigns.campaign import Campaign, CampaignError
from engine.campaigns.errors import BadInput, Conflict, Forbidden, NotFound, Unauthorized
from engine.campaigns.masks import (
    Submission,
    decode_rle,
    delete_mask,
    image_masks,
    mask_shape,
    skip_object,
    submit_mask,
)
from engine.campaigns.queue import end_lease, heartbeat, lease_next
from stages.automatic.rle import coco_encode, masks_to_rles
from tests.engine.campaigns.bare import MODEL_SHA, OTHER_SHA, add_embedding, bare_campaign


def _people(campaign: Campaign, *names: str) -> list[int]:
    ids = []
    for name in names:
        token = add_annotator(campaign, name)
        ids.append(authenticate(campaign, f"Bearer {token}").annotator_id)
    return ids


def _rle(mask: np.ndarray) -> dict:
    return coco_encode(masks_to_rles(torch.from_numpy(mask)[None])[0])


def _square(size_hw: tuple[int, int] = (20, 30)) -> np.ndarray:
    mask = np.zeros(size_hw, dtype=bool)
    mask[3:9, 5:17] = True
    return mask


def _submission(lease, client_id: str = "c1", mask: np.ndarray | None = None, **extra):
    return Submission(
        client_id=client_id,
        lease_id=lease.lease_id,
        image_id=lease.image_id,
        rle=_rle(_square() if mask is None else mask),
        model_sha256=MODEL_SHA,
        prompts={"points": [[6.0, 10.0, 1]], "box": None},
        clicks=1,
        seconds=4.5,
        **extra,
    )


def test_tokens_are_hashed_and_checked(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c")
    token = add_annotator(campaign, "ana")
    admin = add_annotator(campaign, "boss", role=ADMIN)
    assert authenticate(campaign, f"Bearer {token}").name == "ana"
    assert authenticate(campaign, f"Bearer {admin}").is_admin
    stored = campaign.db.connection().execute("SELECT token_sha256 FROM annotators").fetchall()
    assert all(token not in row[0] for row in stored)
    for header in (None, "Basic x", f"Bearer {token}x"):
        with pytest.raises(Unauthorized):
            authenticate(campaign, header)
    with pytest.raises(CampaignError, match="exists"):
        add_annotator(campaign, "ana")
    with pytest.raises(CampaignError, match="name"):
        add_annotator(campaign, "../etc")


def test_one_image_per_annotator_and_the_same_lease_on_asking_again(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=3)
    ana, bob, cy, dee = _people(campaign, "ana", "bob", "cy", "dee")
    first = lease_next(campaign, ana)
    assert first is not None and first.image_id == 1
    assert lease_next(campaign, ana).lease_id == first.lease_id  # a reloaded page
    second, third = lease_next(campaign, bob), lease_next(campaign, cy)
    assert {second.image_id, third.image_id} == {2, 3}
    assert lease_next(campaign, dee) is None


def test_images_with_embeddings_go_first(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=4)
    add_embedding(campaign, 3)
    add_embedding(campaign, 2, OTHER_SHA)  # another model's: not ready for the current one
    ana, bob = _people(campaign, "ana", "bob")
    assert lease_next(campaign, ana).image_id == 3
    assert lease_next(campaign, bob).image_id == 1


def test_expired_lease_returns_the_image_and_keeps_its_masks(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=1, lease_ttl_s=0.5)
    ana, bob = _people(campaign, "ana", "bob")
    lease = lease_next(campaign, ana)
    mask_id, created = submit_mask(campaign, ana, _submission(lease))
    assert created
    assert lease_next(campaign, bob) is None
    time.sleep(0.6)
    with pytest.raises(Conflict, match="expired"):
        heartbeat(campaign, lease.lease_id, ana)
    again = lease_next(campaign, bob)
    assert again is not None and again.image_id == lease.image_id
    assert [m["mask_id"] for m in image_masks(campaign.db.connection(), again.image_id)] == [
        mask_id
    ]
    with pytest.raises((Conflict, Forbidden)):
        submit_mask(campaign, ana, _submission(lease, client_id="c2"))
    # a retry of the submission acknowledged before the lease expired: the same mask
    assert submit_mask(campaign, ana, _submission(lease)) == (mask_id, False)


def test_heartbeat_renews_and_foreign_leases_are_refused(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=2, lease_ttl_s=1.0)
    ana, bob = _people(campaign, "ana", "bob")
    lease = lease_next(campaign, ana)
    for _ in range(3):
        time.sleep(0.5)
        heartbeat(campaign, lease.lease_id, ana)
    assert lease_next(campaign, bob).image_id == 2  # image 1 stayed with ana
    with pytest.raises(Forbidden):
        heartbeat(campaign, lease.lease_id, bob)
    with pytest.raises(Forbidden):
        submit_mask(campaign, bob, _submission(lease))
    with pytest.raises(Conflict):
        heartbeat(campaign, "no-such-lease", ana)


def test_submissions_are_idempotent_and_checked(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=2)
    (ana,) = _people(campaign, "ana")
    lease = lease_next(campaign, ana)
    mask_id, created = submit_mask(campaign, ana, _submission(lease, predicted_iou=0.8))
    again = submit_mask(campaign, ana, _submission(lease, predicted_iou=0.8))
    assert created and again == (mask_id, False)
    with pytest.raises(Conflict, match="another submit_mask"):  # the same id, another body
        submit_mask(campaign, ana, _submission(lease))
    row = campaign.db.connection().execute("SELECT * FROM masks").fetchall()
    assert len(row) == 1
    assert row[0]["bbox"] == "[5, 3, 11, 5]" and row[0]["area"] == 6 * 12
    wrong_size = np.zeros((21, 30), dtype=bool)
    wrong_size[2:5, 2:5] = True
    bad = {
        "size": _submission(lease, "c2", mask=wrong_size),
        "empty": _submission(lease, "c3", mask=np.zeros((20, 30), dtype=bool)),
        "model": Submission(**{**_submission(lease, "c4").__dict__, "model_sha256": "ef" * 32}),
        "rle": Submission(
            **{**_submission(lease, "c5").__dict__, "rle": {"size": [20, 30], "counts": [5, 3]}}
        ),
        "counts": Submission(
            **{**_submission(lease, "c6").__dict__, "rle": {"size": [20, 30], "counts": "\x00!"}}
        ),
    }
    for name, submission in bad.items():
        with pytest.raises(BadInput):
            submit_mask(campaign, ana, submission)
        assert len(campaign.db.connection().execute("SELECT * FROM masks").fetchall()) == 1, name
    with pytest.raises(Forbidden):  # the lease is for another image
        submit_mask(
            campaign, ana, Submission(**{**_submission(lease, "c7").__dict__, "image_id": 2})
        )


def test_uncompressed_counts_are_stored_as_coco_strings(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=1)
    (ana,) = _people(campaign, "ana")
    lease = lease_next(campaign, ana)
    runs = masks_to_rles(torch.from_numpy(_square())[None])[0]
    body = Submission(**{**_submission(lease).__dict__, "rle": runs})
    submit_mask(campaign, ana, body)
    stored = image_masks(campaign.db.connection(), lease.image_id)[0]["rle"]
    assert np.array_equal(decode_rle(stored), _square())
    assert stored["counts"] == _rle(_square())["counts"]


def test_mask_shape_has_sa1b_semantics() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2, 3] = mask[6, 9] = True
    shape = mask_shape(mask)
    assert shape.bbox == [3, 2, 6, 4] and shape.area == 2  # no +1, pixel count


def test_delete_only_own_masks_and_skip_object_is_recorded(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=2)
    ana, bob = _people(campaign, "ana", "bob")
    lease = lease_next(campaign, ana)
    mask_id, _ = submit_mask(campaign, ana, _submission(lease))
    with pytest.raises(Forbidden):
        delete_mask(campaign, bob, mask_id, lease.lease_id)
    with pytest.raises(NotFound):
        delete_mask(campaign, ana, 999, lease.lease_id)
    delete_mask(campaign, ana, mask_id, lease.lease_id)
    assert image_masks(campaign.db.connection(), lease.image_id) == []
    first = skip_object(
        campaign, ana, lease_id=lease.lease_id, client_id="s1", seconds=31, clicks=6
    )
    again = skip_object(
        campaign, ana, lease_id=lease.lease_id, client_id="s1", seconds=31, clicks=6
    )
    assert first == again
    kinds = [r[0] for r in campaign.db.connection().execute("SELECT kind FROM events")]
    assert kinds.count("skip_object") == 1 and kinds.count("delete_mask") == 1


def test_skip_and_finish_end_leases(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=2, max_image_skips=2)
    ana, bob, cy = _people(campaign, "ana", "bob", "cy")
    lease = lease_next(campaign, ana)
    assert end_lease(campaign, lease.lease_id, ana, finish=False, client_id="k1") == "queued"
    assert end_lease(campaign, lease.lease_id, ana, finish=False, client_id="k1") == "queued"
    assert lease_next(campaign, ana).image_id == 2  # not the image ana skipped
    skipped_again = lease_next(campaign, bob)
    assert skipped_again.image_id == 1
    assert end_lease(campaign, skipped_again.lease_id, bob, finish=False, client_id="k2") == (
        "set_aside"
    )
    assert lease_next(campaign, cy) is None
    current = lease_next(campaign, ana)
    assert end_lease(campaign, current.lease_id, ana, finish=True, client_id="f1") == "done"
    with pytest.raises(Conflict):
        heartbeat(campaign, current.lease_id, ana)


@pytest.mark.parametrize("seed", range(5))
def test_coco_string_runs_match_pycocotools(seed: int) -> None:
    from pycocotools import mask as mask_utils

    from engine.campaigns.masks import coco_string_runs

    rng = np.random.default_rng(seed)
    mask = rng.random((37, 53)) < [0.02, 0.5, 0.98][seed % 3]
    mask[5:30, 10:40] = seed % 2 == 0
    runs = masks_to_rles(torch.from_numpy(mask)[None])[0]["counts"]
    text = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    assert coco_string_runs(text).tolist() == runs


def test_a_second_lease_ahead_becomes_current_after_finish(tmp_path: Path) -> None:
    campaign = bare_campaign(tmp_path / "c", num_images=4)
    ana, bob = _people(campaign, "ana", "bob")
    current = lease_next(campaign, ana)
    following = lease_next(campaign, ana, ahead=True)
    assert (current.image_id, following.image_id) == (1, 2)
    assert lease_next(campaign, ana, ahead=True).lease_id == following.lease_id
    assert lease_next(campaign, ana).lease_id == current.lease_id
    assert lease_next(campaign, bob).image_id == 3
    end_lease(campaign, current.lease_id, ana, finish=True, client_id="f")
    assert lease_next(campaign, ana).lease_id == following.lease_id
