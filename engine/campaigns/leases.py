"""What a client receives with a lease: the image, the model version whose embedding is
ready for it (the current model when ready, else the newest one that is), where to fetch
the image, embedding and decoder, and the image's masks so far (nothing accepted is lost
when a lease expires or a page reloads)."""

from __future__ import annotations

from typing import Any

from engine.campaigns.campaign import Campaign
from engine.campaigns.db import now
from engine.campaigns.masks import image_masks
from engine.campaigns.queue import Lease


def lease_view(campaign: Campaign, lease: Lease) -> dict[str, Any]:
    with campaign.db.read() as db:
        model = db.execute(
            "SELECT m.sha256, m.version, e.input_h, e.input_w FROM embeddings e "
            "JOIN models m ON m.sha256 = e.model_sha256 WHERE e.image_id = ? "
            "ORDER BY m.version DESC LIMIT 1",
            (lease.image_id,),
        ).fetchone()
        current = db.execute("SELECT MAX(version) FROM models").fetchone()[0]
        masks = image_masks(db, lease.image_id)
    image_id = lease.image_id
    view: dict[str, Any] = {
        "lease_id": lease.lease_id,
        "expires_at": lease.expires_at,
        "ttl_s": campaign.queue.lease_ttl_s,
        "server_time": now(),
        "image": {
            "image_id": image_id,
            "key": lease.key,
            "width": lease.width,
            "height": lease.height,
            "stage": lease.stage,
            "url": f"/api/images/{image_id}/image",
        },
        "model": None,
        "embedding_url": None,
        "masks": masks,
    }
    if model is not None:
        sha = model["sha256"]
        quantized = campaign.storage.exists(campaign.decoder_path(sha, quantized=True))
        view["model"] = {
            "sha256": sha,
            "version": model["version"],
            "is_current": model["version"] == current,
            "decoder_url": f"/api/models/{sha}/decoder.onnx",
            "decoder_quant_url": f"/api/models/{sha}/decoder.quant.onnx" if quantized else None,
            "input_size": [model["input_h"], model["input_w"]],
        }
        view["embedding_url"] = f"/api/images/{image_id}/embedding?model={sha}"
    return view
