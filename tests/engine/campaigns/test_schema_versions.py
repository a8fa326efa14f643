"""Schema versions: a campaign made by an older release is upgraded when opened (each
migration in its own transaction) and keeps working; a database of a newer release, or one
without a version, is refused with one line. tests/data/campaign_v1 was made by schema
version 1's code (tests/data/README.md says how)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engine.campaigns.auth import add_annotator, authenticate
from engine.campaigns.campaign import Campaign, CampaignError
from engine.campaigns.db import DB_FILE, MIGRATIONS, SCHEMA_VERSION, Migration
from engine.campaigns.errors import Conflict
from engine.campaigns.masks import Submission, image_masks, skip_object, submit_mask
from engine.campaigns.queue import end_lease, lease_next, status_counts
from engine.campaigns.versions import current_model
from tests.engine.campaigns.test_queue_and_masks import _rle

V1 = Path(__file__).resolve().parents[2] / "data" / "campaign_v1"


@pytest.fixture
def v1_campaign(tmp_path: Path) -> Path:
    folder = tmp_path / "campaign"
    shutil.copytree(V1, folder)
    return folder


def _stored_version(folder: Path) -> int:
    with sqlite3.connect(folder / DB_FILE) as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


def _set_version(folder: Path, value: str | None) -> None:
    with sqlite3.connect(folder / DB_FILE) as db:
        if value is None:
            db.execute("DELETE FROM meta WHERE key = 'schema_version'")
        else:
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (value,))


def _indexes(folder: Path) -> set[str]:
    with sqlite3.connect(folder / DB_FILE) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {row[0] for row in rows}


def test_a_version_1_campaign_is_upgraded_and_keeps_working(v1_campaign: Path) -> None:
    assert _stored_version(v1_campaign) == 1 < SCHEMA_VERSION
    assert "images_waiting" not in _indexes(v1_campaign)
    campaign = Campaign(v1_campaign)
    assert _stored_version(v1_campaign) == SCHEMA_VERSION
    assert "images_waiting" in _indexes(v1_campaign)
    with campaign.db.read() as db:
        assert status_counts(db) == {"done": 1, "queued": 2}
        (mask,) = image_masks(db, 1)
        model = current_model(db)
        ana = db.execute("SELECT annotator_id FROM annotators WHERE name = 'ana'").fetchone()[0]
    assert mask["origin"] == "manual" and mask["annotator"] == "ana"
    # image 2 has its embedding for the current model, image 3 none: 2 goes first
    lease = lease_next(campaign, ana)
    assert lease is not None and lease.image_id == 2
    bob = authenticate(campaign, f"Bearer {add_annotator(campaign, 'bob')}").annotator_id
    assert lease_next(campaign, bob).image_id == 3
    shape = np.zeros((lease.height, lease.width), dtype=bool)
    shape[10:40, 20:60] = True
    body = Submission(
        client_id="after-upgrade",
        lease_id=lease.lease_id,
        image_id=2,
        rle=_rle(shape),
        model_sha256=str(model),
    )
    mask_id, created = submit_mask(campaign, ana, body)
    assert created and mask_id > mask["mask_id"]
    assert submit_mask(campaign, ana, body) == (mask_id, False)
    assert end_lease(campaign, lease.lease_id, ana, finish=True, client_id="f2") == "done"
    with campaign.db.read() as db:
        assert status_counts(db) == {"done": 2, "leased": 1}
    Campaign(v1_campaign)  # opening the upgraded campaign again changes nothing
    assert _stored_version(v1_campaign) == SCHEMA_VERSION


def test_version_3_names_each_client_id_s_action_from_the_stored_rows(v1_campaign: Path) -> None:
    """The client ids that version 1 stored (a mask, a skipped object, a finished image) are
    each bound to their action: a retry answers what was stored, another action is a 409."""
    campaign = Campaign(v1_campaign)
    with campaign.db.read() as db:
        rows = db.execute(
            "SELECT client_id, action, result_id, body_sha256 FROM client_actions"
        ).fetchall()
        ana = db.execute("SELECT annotator_id FROM annotators WHERE name = 'ana'").fetchone()[0]
    assert sorted((r[0], r[1], r[2], r[3]) for r in rows) == [
        ("v1-finish-1", "finish_image", 1, None),
        ("v1-mask-1", "submit_mask", 1, None),
        ("v1-skip-1", "skip_object", 2, None),
    ]
    lease = lease_next(campaign, ana)
    assert lease is not None
    again = skip_object(
        campaign, ana, lease_id=lease.lease_id, client_id="v1-skip-1", seconds=1, clicks=1
    )
    assert again == 2  # a retry of the stored skip (no digest then: any body of its action)
    with pytest.raises(Conflict, match="was used for submit_mask"):
        end_lease(campaign, lease.lease_id, ana, finish=True, client_id="v1-mask-1")
    assert end_lease(campaign, lease.lease_id, ana, finish=True, client_id="new") == "done"


def test_a_failed_migration_leaves_the_database_at_its_version(
    v1_campaign: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = Migration(
        SCHEMA_VERSION + 1,
        "half applied, then fails",
        ("CREATE INDEX half ON images (source)", "CREATE INDEX broken ON no_such_table (x)"),
    )
    monkeypatch.setattr("engine.campaigns.db.MIGRATIONS", (*MIGRATIONS, broken))
    monkeypatch.setattr("engine.campaigns.db.SCHEMA_VERSION", broken.version)
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        Campaign(v1_campaign)
    assert _stored_version(v1_campaign) == SCHEMA_VERSION  # the migrations before it stay
    assert "images_waiting" in _indexes(v1_campaign) and "half" not in _indexes(v1_campaign)


def test_a_newer_release_s_database_is_refused(v1_campaign: Path) -> None:
    _set_version(v1_campaign, str(SCHEMA_VERSION + 1))
    with pytest.raises(CampaignError, match="made by a newer release") as refused:
        Campaign(v1_campaign)
    assert "\n" not in str(refused.value) and f"version {SCHEMA_VERSION + 1}" in str(refused.value)
    assert _stored_version(v1_campaign) == SCHEMA_VERSION + 1  # left as it was


@pytest.mark.parametrize("value", [None, "one"])
def test_a_database_without_a_version_is_refused(v1_campaign: Path, value: str | None) -> None:
    _set_version(v1_campaign, value)
    with pytest.raises(CampaignError, match="no schema version"):
        Campaign(v1_campaign)
    (v1_campaign / DB_FILE).write_bytes(b"not a database" * 100)
    with pytest.raises(CampaignError, match="not a campaign database"):
        Campaign(v1_campaign)
