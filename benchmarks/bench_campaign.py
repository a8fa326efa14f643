"""Campaign service throughput on this machine.

    python -m benchmarks.bench_campaign [--images 32] [--annotators 1 4 8 16] [--masks 20]

1. The embed job (`saengine campaign embed`, a local Ray with one model worker) against the
   image encoder alone in this process (SamPredictor.set_image over the same stored images):
   embeddings/s and the ratio (the job's overhead: Ray start, decode tasks, fp16 writes,
   database commits). For the bundled model; add --vit-b for vit_b (random weights).
2. Mask submissions over HTTP to a real server (`saengine campaign serve`, uvicorn, SQLite
   WAL with synchronous=FULL) from N concurrent clients: latency (median, 95th percentile)
   and masks/s, against the same submissions stored in this process without HTTP.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import machine
from engine.campaigns.auth import add_annotator, authenticate
from engine.campaigns.campaign import Campaign
from engine.campaigns.client import CampaignClient, new_client_id
from engine.campaigns.masks import Submission, submit_mask
from engine.campaigns.queue import current_model, lease_next
from engine.campaigns.serve import saengine_command
from engine.campaigns.server_process import start_server
from engine.campaigns.versions import model_config_row
from engine.training.synthetic import write_synthetic_dataset
from model import SamPredictor
from stages.automatic.rle import coco_encode, masks_to_rles


def _saengine(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([*saengine_command(), *args], check=True, capture_output=True)
    return time.perf_counter() - start


def bench_embed(root: Path, images: int, model: list[str], label: str) -> None:
    data = root / f"scenes-{label}"
    write_synthetic_dataset(str(data), num_images=images, split="test")
    folder = root / f"embed-{label}"
    _saengine("campaign", "create", str(folder), f"input={data}", *model, "progress=false")
    seconds = _saengine("campaign", "embed", str(folder), "progress=false")
    campaign = Campaign(folder)
    with campaign.db.read() as db:
        config = model_config_row(db, current_model(db) or "")
    from hydra.utils import instantiate

    predictor = SamPredictor(instantiate(config))
    paths = sorted((folder / "images").glob("*.jpg"))
    start = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            predictor.set_image(np.asarray(Image.open(path).convert("RGB")))
    alone = time.perf_counter() - start
    print(
        f"embed {label}: job {images / seconds:.2f} embeddings/s ({seconds:.1f} s incl. Ray "
        f"start), encoder alone {images / alone:.2f}/s; job/alone {alone / seconds:.2f}x"
    )


def _mask_rle(size: int, rng: np.random.Generator) -> dict:
    mask = np.zeros((size, size), dtype=bool)
    y, x = rng.integers(0, size - 40, 2)
    mask[y : y + 30, x : x + 30] = True
    return coco_encode(masks_to_rles(torch.from_numpy(mask)[None])[0])


def bench_submit(root: Path, annotators: list[int], masks: int) -> None:
    data = root / "scenes-submit"
    write_synthetic_dataset(str(data), num_images=max(annotators) * 2, split="test")
    folder = root / "submit"
    _saengine(
        "campaign",
        "create",
        str(folder),
        f"input={data}",
        "model=bundled",
        "onnx.quantize=false",
        "progress=false",
    )
    campaign = Campaign(folder)
    with campaign.db.read() as db:
        model = current_model(db) or ""
    rng = np.random.default_rng(0)
    who = authenticate(campaign, f"Bearer {add_annotator(campaign, 'inprocess')}").annotator_id
    lease = lease_next(campaign, who)
    assert lease is not None
    start = time.perf_counter()
    for _ in range(masks):
        submit_mask(
            campaign,
            who,
            Submission(new_client_id(), lease.lease_id, lease.image_id, _mask_rle(256, rng), model),
        )
    baseline = masks / (time.perf_counter() - start)
    print(f"submit in process (no HTTP): {baseline:.0f} masks/s")
    server, url = start_server(campaign, "embed=false", "rounds=false")
    try:
        for count in annotators:
            tokens = [add_annotator(campaign, f"b{count}-{i}") for i in range(count)]
            rate, latencies = _concurrent_submits(url, tokens, model, masks)
            ordered = sorted(latencies)
            print(
                f"submit over HTTP, {count:2d} annotators: {rate:6.0f} masks/s "
                f"({rate / baseline:.2f}x in-process), latency median "
                f"{1000 * statistics.median(ordered):.1f} ms, p95 "
                f"{1000 * ordered[int(0.95 * (len(ordered) - 1))]:.1f} ms"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


def _concurrent_submits(
    url: str, tokens: list[str], model: str, masks: int
) -> tuple[float, list[float]]:
    """Each token's client leases an image and submits `masks` masks; masks/s, latencies."""
    latencies: list[float] = []

    def work(token: str, seed: int) -> None:
        client = CampaignClient(url, token)
        rng = np.random.default_rng(seed)
        held = client.lease()
        assert held is not None
        for _ in range(masks):
            body = {
                "lease_id": held["lease_id"],
                "image_id": held["image"]["image_id"],
                "rle": _mask_rle(256, rng),
                "model_sha256": model,
            }
            began = time.perf_counter()
            client.submit(body)
            latencies.append(time.perf_counter() - began)
        client.json("POST", f"/api/leases/{held['lease_id']}/finish", json={})
        client.close()

    threads = [threading.Thread(target=work, args=(t, i)) for i, t in enumerate(tokens)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(tokens) * masks / (time.perf_counter() - began), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--annotators", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--masks", type=int, default=20, help="submissions per annotator")
    parser.add_argument("--vit-b", action="store_true", help="also the embed job with vit_b")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        bench_embed(root, args.images, ["model=bundled"], "bundled")
        if args.vit_b:
            vit_b = ["model=vit_b", "model.checkpoint=null", "model.random_seed=0"]
            bench_embed(root, max(4, args.images // 8), vit_b, "vit_b")
        bench_submit(root, args.annotators, args.masks)


if __name__ == "__main__":
    main()
