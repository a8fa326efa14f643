"""The campaign API on a real server (`saengine campaign serve` in a subprocess, uvicorn):
authentication, leases, images and embeddings, and every bad request refused with a clear
4xx and nothing stored."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from engine.campaigns.auth import ADMIN, add_annotator
from engine.campaigns.campaign import Campaign, set_campaign_detector
from engine.campaigns.client import CampaignClient
from engine.campaigns.server_process import start_server
from engine.campaigns.state import served_names
from engine.embeddings import from_npy_bytes, to_npy_bytes
from tests.engine.campaigns.bare import MODEL_SHA, add_embedding, bare_campaign
from tests.engine.campaigns.test_queue_and_masks import _rle, _square

SIZE_HW = (20, 30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("api") / "campaign"
    campaign = bare_campaign(folder, num_images=3, size_hw=SIZE_HW, lease_ttl_s=5.0)
    rng = np.random.default_rng(0)
    for image_id in (1, 2, 3):
        pixels = rng.integers(0, 255, (*SIZE_HW, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG")
        campaign.storage.write_bytes(campaign.image_path(f"sa_{image_id}"), buffer.getvalue())
    tokens = {name: add_annotator(campaign, name) for name in ("ana", "bob", "cy")}
    tokens["admin"] = add_annotator(campaign, "boss", role=ADMIN)
    process, url = start_server(campaign, "embed=false", "rounds=false")
    yield campaign, url, tokens
    process.terminate()
    process.wait(timeout=30)


def _client(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def _mask_count(campaign: Campaign) -> int:
    return campaign.db.connection().execute("SELECT COUNT(*) FROM masks").fetchone()[0]


def test_every_call_needs_a_known_token(served) -> None:
    campaign, url, tokens = served
    for token in (None, "not-a-token"):
        with _client(url, token) as client:
            for method, path in (
                ("POST", "/api/lease"),
                ("GET", "/api/images/1/image"),
                ("GET", f"/api/images/1/embedding?model={MODEL_SHA}"),
                ("GET", f"/api/models/{MODEL_SHA}/decoder.onnx"),
                ("GET", "/api/stats"),
            ):
                response = client.request(method, path)
                assert response.status_code == 401, (token, path)
                assert "token" in response.json()["detail"]
    with _client(url, None) as client:
        assert client.get("/api/health").status_code == 200
        assert client.get("/docs").status_code == 200
        headers = client.get("/api/health").headers
        assert headers["cross-origin-opener-policy"] == "same-origin"
        assert headers["cross-origin-embedder-policy"] == "require-corp"


def test_the_caller_and_the_campaign_s_names(served) -> None:
    campaign, url, tokens = served
    with _client(url, tokens["ana"]) as ana:
        me = ana.get("/api/me").json()
    assert (me["name"], me["role"]) == ("ana", "annotator")
    assert me["names"] == served_names() and me["names"]["stage"]["SEMI"] == 2


def test_only_the_leaseholder_reads_an_image(served) -> None:
    campaign, url, tokens = served
    with _client(url, tokens["ana"]) as ana, _client(url, tokens["bob"]) as bob:
        lease = ana.post("/api/lease").json()["lease"]
        image_id = lease["image"]["image_id"]
        assert lease["model"] is None and lease["embedding_url"] is None  # not embedded yet
        data = ana.get(f"/api/images/{image_id}/image").content
        assert Image.open(io.BytesIO(data)).size == (SIZE_HW[1], SIZE_HW[0])
        small = Image.open(io.BytesIO(ana.get(f"/api/images/{image_id}/image?max_side=16").content))
        assert max(small.size) == 16
        assert bob.get(f"/api/images/{image_id}/image").status_code == 403
        assert bob.get("/api/images/999/image").status_code == 404
        for path in ("/api/images/abc/image", "/api/images/1/image?max_side=-5"):
            assert bob.get(path).status_code == 422
    with _client(url, tokens["admin"]) as admin:
        assert admin.get(f"/api/images/{image_id}/image").status_code == 200


def test_embedding_when_ready_and_decoders_by_model(served) -> None:
    campaign, url, tokens = served
    with _client(url, tokens["cy"]) as cy:
        lease = cy.post("/api/lease").json()["lease"]
        image_id, key = lease["image"]["image_id"], lease["image"]["key"]
        path = f"/api/images/{image_id}/embedding?model={MODEL_SHA}"
        waiting = cy.get(path)
        assert waiting.status_code == 409 and waiting.headers["retry-after"]
        array = np.random.default_rng(1).normal(size=(256, 4, 4)).astype(np.float16)
        campaign.embeddings(MODEL_SHA).write(key, array)
        add_embedding(campaign, image_id)
        refreshed = cy.get(f"/api/leases/{lease['lease_id']}").json()["lease"]
        assert refreshed["model"]["sha256"] == MODEL_SHA
        ready = cy.get(refreshed["embedding_url"])
        assert ready.status_code == 200 and ready.content == to_npy_bytes(array)
        assert np.array_equal(from_npy_bytes(ready.content), array)
        assert "immutable" in ready.headers["cache-control"]
        assert cy.get(f"/api/models/{MODEL_SHA}/decoder.onnx").status_code == 404  # none here
        for bad in (
            "/api/models/..%2F..%2Fetc/decoder.onnx",
            f"/api/models/{MODEL_SHA}/..%2Fcampaign.db",
            f"/api/models/{MODEL_SHA}/campaign.db",
            f"/api/images/{image_id}/embedding?model=../../x",
        ):
            assert cy.get(bad).status_code in (404, 422), bad


def test_submissions_refused_with_a_reason_and_nothing_stored(served) -> None:
    campaign, url, tokens = served
    with _client(url, tokens["ana"]) as ana, _client(url, tokens["bob"]) as bob:
        lease = ana.post("/api/lease").json()["lease"]  # ana's lease from before
        body = {
            "client_id": "m1",
            "lease_id": lease["lease_id"],
            "image_id": lease["image"]["image_id"],
            "rle": _rle(_square(SIZE_HW)),
            "model_sha256": MODEL_SHA,
            "prompts": {"points": [[6, 10, 1]], "box": None},
            "clicks": 1,
            "seconds": 3.0,
        }
        before = _mask_count(campaign)
        refusals = {
            422: {**body, "client_id": "bad", "rle": {"size": [20, 30], "counts": "\x7f\x7f"}},
            403: {**body, "client_id": "foreign"},
        }
        oversized = b'{"counts": [' + b"1," * (9 * 1024 * 1024) + b"1]}"
        headers = {"Content-Type": "application/json"}
        assert ana.post("/api/masks", content=oversized, headers=headers).status_code == 413
        chunks = (oversized[i : i + 2**20] for i in range(0, len(oversized), 2**20))
        assert ana.post("/api/masks", content=chunks, headers=headers).status_code == 413
        assert ana.post(f"/api/leases/{lease['lease_id']}/heartbeat").status_code == 200
        wrong = ana.post(
            "/api/masks", json={**body, "client_id": "w", "rle": _rle(_square((21, 30)))}
        )
        assert wrong.status_code == 422 and "image" in wrong.json()["detail"]
        assert ana.post("/api/masks", json=refusals[422]).status_code == 422
        assert bob.post("/api/masks", json=refusals[403]).status_code == 403
        assert ana.post("/api/masks", json={**body, "model_sha256": "x"}).status_code == 422
        assert _mask_count(campaign) == before
        first = ana.post("/api/masks", json=body)
        again = ana.post("/api/masks", json=body)
        assert first.status_code == 201 and again.status_code == 200
        assert first.json()["mask_id"] == again.json()["mask_id"]
        assert _mask_count(campaign) == before + 1
        assert bob.delete(f"/api/masks/{first.json()['mask_id']}?lease_id=x").status_code in (
            403,
            409,
        )
        time.sleep(5.2)  # the lease's TTL passes without a heartbeat
        late = ana.post("/api/masks", json={**body, "client_id": "m2"})
        assert late.status_code == 409 and "expired" in late.json()["detail"]
        assert ana.post(f"/api/leases/{lease['lease_id']}/heartbeat").status_code == 409
        assert _mask_count(campaign) == before + 1


def test_stats_for_admins_only(served) -> None:
    campaign, url, tokens = served
    with _client(url, tokens["bob"]) as bob, _client(url, tokens["admin"]) as admin:
        assert bob.get("/api/stats").status_code == 403
        stats = admin.get("/api/stats").json()
        assert stats["rounds"]["0"]["manual_masks"] >= 1


def test_stage_2_images_waiting_for_their_prefill_are_reported_and_waited_for(
    tmp_path: Path,
) -> None:
    """Nothing leasable while stage-2 images wait for their prefill: the lease answer says
    how many wait (0 means the queue is empty), and the client waits for them."""
    campaign = bare_campaign(tmp_path / "campaign", num_images=2, size_hw=SIZE_HW)
    with campaign.db.write() as db:
        db.execute("UPDATE images SET stage = 2")
    set_campaign_detector(campaign, "detector.pt")  # the prefill job's; not run here
    token = add_annotator(campaign, "ana")
    process, url = start_server(campaign, "embed=false", "rounds=false")
    try:
        with _client(url, token) as ana:
            assert ana.post("/api/lease").json() == {"lease": None, "waiting": 2}

            def prefill_later() -> None:
                time.sleep(1.5)
                with campaign.db.write() as db:
                    db.execute("UPDATE images SET prefill_model = 'x:y' WHERE image_id = 2")

            thread = threading.Thread(target=prefill_later)
            thread.start()
            lease = CampaignClient(url, token).lease(poll_s=0.2)
            thread.join()
            assert lease is not None and lease["image"]["image_id"] == 2
            ana.post(f"/api/leases/{lease['lease_id']}/finish", json={"client_id": "f1"})
            with campaign.db.write() as db:
                db.execute("UPDATE images SET status = 'error' WHERE image_id = 1")
            assert ana.post("/api/lease").json() == {"lease": None, "waiting": 0}
            assert CampaignClient(url, token).lease() is None
            with campaign.db.write() as db:  # without a detector nothing would prefill them
                db.execute("UPDATE images SET status = 'queued' WHERE image_id = 1")
                db.execute("DELETE FROM meta WHERE key = 'detector'")
            assert ana.post("/api/lease").json() == {"lease": None, "waiting": 0}
    finally:
        process.terminate()
        process.wait(timeout=30)
