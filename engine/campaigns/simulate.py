"""`saengine campaign simulate`: scripted annotators working through a campaign over its
HTTP API, the way the browser app does (lease, fetch the embedding and the ONNX decoder,
run the decoder locally, submit masks with client ids, heartbeat, finish).

Each annotator takes the true objects of its image largest first (the paper's "in order of
prominence"), skips those an accepted mask already covers, and segments the others with
`stages.assisted.annotator` until the image's time budget is spent; in stage 2 it first
rejects prefilled masks that match no true object. Every acknowledged submission is
logged to <dir>/runs/simulate-<time>.jsonl.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.campaigns.auth import add_annotator
from engine.campaigns.campaign import Campaign
from engine.campaigns.client import ApiError, CampaignClient, new_client_id
from engine.campaigns.masks import decode_rle
from engine.campaigns.queue import image_sources
from engine.campaigns.state import MaskOrigin
from engine.campaigns.truth import TruthIndex
from engine.embeddings import from_npy_bytes
from stages.assisted.annotator import AnnotatorPolicy, Prediction, annotate_object, onnx_decode
from stages.assisted.prompts import mask_iou
from stages.automatic.rle import coco_encode, masks_to_rles

COVERED_IOU = 0.5
POLL_S = 0.5


@dataclass
class AnnotatorReport:
    name: str
    images: int = 0
    masks: int = 0
    skipped: int = 0
    rejected: int = 0
    clicks: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class ScriptedAnnotator:
    """One simulated person with their own token and HTTP client.

    The random draws for an image come from (seed, image id), not from the annotator: which
    thread leases which image is a race, and a simulation is repeatable only if its masks
    do not depend on it."""

    def __init__(
        self,
        *,
        name: str,
        client: CampaignClient,
        truth: TruthIndex,
        policy: AnnotatorPolicy,
        seed: int,
        log: Callable[[dict[str, Any]], None],
        decoders: DecoderCache,
        sources: dict[int, str],
    ) -> None:
        self.report = AnnotatorReport(name)
        self.client, self.truth, self.policy, self.seed = client, truth, policy, seed
        self.log, self.decoders, self.sources = log, decoders, sources

    def run(self, max_images: Callable[[], bool]) -> AnnotatorReport:
        while not max_images():
            lease = self.client.lease()
            if lease is None:
                break
            try:
                self.work_on(lease)
            except ApiError as error:
                if error.status != 409:  # an expired lease: take the next image
                    raise
                self.report.errors.append(error.detail)
        return self.report

    def work_on(self, lease: dict[str, Any]) -> None:
        lease = self._with_model(lease)
        image = lease["image"]
        size = (image["height"], image["width"])
        targets = self.truth.masks(self._source(lease), size)
        decode = self._decoder(lease)
        rng = np.random.default_rng([self.seed, image["image_id"]])
        budget = self.policy.seconds_per_image
        spent = 0.0
        existing = [
            decode_rle(m["rle"]) for m in lease["masks"] if m["origin"] == MaskOrigin.MANUAL
        ]
        existing += self._review_prefilled(lease, targets, decode)
        for target in targets if targets is not None else []:
            if spent >= budget or target.sum() < self.policy.min_area:
                continue
            if any(mask_iou(mask, target) >= COVERED_IOU for mask in existing):
                continue
            outcome = annotate_object(decode, target, self.policy, rng)
            spent += outcome.seconds
            self.report.clicks += outcome.clicks
            self.report.seconds += outcome.seconds
            if outcome.mask is None:
                self._skip_object(lease, outcome)
                continue
            self._submit(lease, outcome)
            existing.append(outcome.mask)
            self._keep_alive(lease)
        self.client.json(
            "POST", f"/api/leases/{lease['lease_id']}/finish", json={"client_id": new_client_id()}
        )
        self.report.images += 1

    def _source(self, lease: dict[str, Any]) -> str:
        return self.sources.get(lease["image"]["image_id"], "")

    def _with_model(self, lease: dict[str, Any]) -> dict[str, Any]:
        """Wait until an embedding is ready for the leased image (renewing the lease)."""
        while lease["model"] is None:
            time.sleep(POLL_S)
            self.client.json("POST", f"/api/leases/{lease['lease_id']}/heartbeat")
            lease = self.client.json("GET", f"/api/leases/{lease['lease_id']}")["lease"]
        return lease

    def _decoder(self, lease: dict[str, Any]) -> Callable[..., Prediction]:
        model = lease["model"]
        session = self.decoders.get(self.client, model["decoder_url"])
        embedding = from_npy_bytes(self.client.request("GET", lease["embedding_url"]).content)
        size = (lease["image"]["height"], lease["image"]["width"])
        return onnx_decode(session, embedding, size)

    def _submit(self, lease: dict[str, Any], outcome: Any, path: str = "/api/masks") -> None:
        """POST the object's mask (to `path`: a new mask, or a proposed mask's correction)."""
        import torch

        rle = coco_encode(masks_to_rles(torch.from_numpy(outcome.mask)[None])[0])
        body = {
            "lease_id": lease["lease_id"],
            "image_id": lease["image"]["image_id"],
            "rle": rle,
            "model_sha256": lease["model"]["sha256"],
            "prompts": {"points": outcome.points, "box": outcome.box},
            "clicks": outcome.clicks,
            "brush_strokes": outcome.strokes,
            "seconds": outcome.seconds,
            "predicted_iou": outcome.predicted_iou,
        }
        answer = self.client.json("POST", path, json={"client_id": new_client_id(), **body})
        self.report.masks += 1
        self.log(
            {
                "annotator": self.report.name,
                "mask_id": answer["mask_id"],
                "image_id": body["image_id"],
            }
        )

    def _skip_object(self, lease: dict[str, Any], outcome: Any) -> None:
        self.client.json(
            "POST",
            "/api/skip-object",
            json={
                "client_id": new_client_id(),
                "lease_id": lease["lease_id"],
                "seconds": outcome.seconds,
                "clicks": outcome.clicks,
                "prompts": {"points": outcome.points, "box": outcome.box},
            },
        )
        self.report.skipped += 1

    def _review_prefilled(
        self, lease: dict[str, Any], targets: np.ndarray | None, decode: Callable[..., Prediction]
    ) -> list[np.ndarray]:
        """Stage 2: reject prefilled masks that match no true object; the rest are kept.
        Returns the masks kept (what the annotator need not add again)."""
        kept = []
        for mask in lease["masks"]:
            if mask["origin"] != MaskOrigin.PREFILLED:
                continue
            pixels = decode_rle(mask["rle"])
            matched = targets is not None and any(
                mask_iou(pixels, t) >= COVERED_IOU for t in targets
            )
            if matched:
                kept.append(pixels)
                continue
            self.client.json(
                "POST",
                f"/api/prefilled/{mask['mask_id']}/reject",
                json={"client_id": new_client_id(), "lease_id": lease["lease_id"]},
            )
            self.report.rejected += 1
        return kept

    def _keep_alive(self, lease: dict[str, Any]) -> None:
        if time.time() > lease["expires_at"] - lease["ttl_s"] / 2:
            answer = self.client.json("POST", f"/api/leases/{lease['lease_id']}/heartbeat")
            lease["expires_at"] = answer["expires_at"]


class DecoderCache:
    """One ONNX session per decoder URL (model version), shared by the annotators."""

    def __init__(self) -> None:
        self.sessions: dict[str, Any] = {}
        self.lock = threading.Lock()

    def get(self, client: CampaignClient, url: str) -> Any:
        from stages.assisted.onnx_decoder import OnnxDecoder

        with self.lock:
            if url not in self.sessions:
                self.sessions[url] = OnnxDecoder(client.request("GET", url).content, threads=1)
            return self.sessions[url]


def simulate(
    campaign: Campaign,
    *,
    url: str,
    truth: list[str],
    annotators: int,
    policy: AnnotatorPolicy,
    seed: int,
    max_images: int | None = None,
    make: Callable[..., ScriptedAnnotator] = ScriptedAnnotator,
) -> list[AnnotatorReport]:
    """Run `annotators` scripted annotators concurrently until the queue is empty (or
    `max_images` are finished); make: builds one (a scripted reviewer, for the audit and
    verify modes), with the keyword arguments of `ScriptedAnnotator`."""
    index = TruthIndex(truth)
    with campaign.db.read() as db:
        sources = image_sources(db)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = campaign.runs_dir() / f"simulate-{stamp}.jsonl"
    lock = threading.Lock()
    decoders = DecoderCache()
    reports: list[AnnotatorReport] = []
    failures: list[BaseException] = []

    def log(entry: dict[str, Any]) -> None:
        with lock, open(log_path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def enough() -> bool:
        return max_images is not None and sum(r.images for r in reports) >= max_images

    def work(number: int) -> None:
        name = f"sim-{stamp}-{seed}-{number}"
        token = add_annotator(campaign, name)
        client = CampaignClient(url, token)
        annotator = make(
            name=name,
            client=client,
            truth=index,
            policy=policy,
            seed=seed,
            log=log,
            decoders=decoders,
            sources=sources,
        )
        reports.append(annotator.report)
        try:
            annotator.run(enough)
        except BaseException as error:  # noqa: BLE001 - re-raised by the caller's thread
            failures.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(annotators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return reports
