"""The decoder in the annotation page: decode time per click in headless Chromium, as the
page measures it (performance.now around the onnxruntime-web `run` call), against the same
decoder file run natively by onnxruntime in this process (`OnnxDecoder`, 1 thread, the same
prompts at the same size) as the baseline.

For each model a campaign is made the way users make one (`saengine campaign create` on one
bundled photo, `campaign embed`, `campaign serve`); the page is opened once per setting
(fp32 or quantized decoder, 1 or 2 threads) in a fresh browser profile and clicks objects of
four points (foreground, foreground, background, foreground) on the image: the first click
of each page warms up and is not counted. vit_b has seeded random weights unless
--vit-b-checkpoint is given (the decoder's work does not depend on the values). Usage:
    python -m benchmarks.bench_webapp [--models bundled vit_b] [--clicks 24] [--image truck.jpg]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.campaigns.campaign import Campaign
from stages.assisted.onnx_decoder import OnnxDecoder
from tests.conftest import BUNDLED_IMAGES
from tests.engine.campaigns.browser import Page, machine, start_chromium
from tests.engine.campaigns.webapp import add_annotator, saengine, served

SETTINGS = (("fp32", 1), ("fp32", 2), ("quant", 1), ("quant", 2))
# Clicks as fractions of (W, H); every fourth click starts a new object.
CLICKS = [(0.45, 0.55), (0.3, 0.7), (0.7, 0.3), (0.5, 0.4)]


def make_campaign(root: Path, model: str, image: str, checkpoint: str | None) -> Campaign:
    photos = root / "photos"
    photos.mkdir(parents=True)
    shutil.copy(BUNDLED_IMAGES / image, photos / image)
    model_args = [f"model={model}"]
    if model == "vit_b":
        model_args += (
            [f"model.checkpoint={checkpoint}"]
            if checkpoint
            else ["model.checkpoint=null", "model.random_seed=0"]
        )
    folder = root / model
    saengine("campaign", "create", str(folder), f"input={photos}", *model_args, "progress=false")
    saengine("campaign", "embed", str(folder), "progress=false")
    return Campaign(folder)


def clicks_in_page(page: Page, width: int, height: int, count: int) -> list[float]:
    """Click `count` + 1 points (objects of four); the page's decode times after the first."""
    for index in range(count + 1):
        fx, fy = CLICKS[index % len(CLICKS)]
        jitter = 0.01 * (index // len(CLICKS))
        page.click((fx + jitter) * width, (fy + jitter) * height, right=index % 4 == 2)
        if index % 4 == 3:
            page.press("\ue00c")  # Escape: the next object
    times: list[float] = page.stats()["decodeMs"]
    return times[1:]


def native_baseline(campaign: Campaign, quantized: bool, work: list[int], count: int) -> float:
    """Median ms per click of the same decoder file with onnxruntime in this process."""
    with campaign.db.read() as db:
        sha = db.execute("SELECT sha256 FROM models").fetchone()[0]
        key = db.execute("SELECT key FROM images").fetchone()[0]
    decoder = OnnxDecoder(
        campaign.storage.read_bytes(campaign.decoder_path(sha, quantized=quantized))
    )
    embedding = campaign.embeddings(sha).read(key)
    height, width = work
    times, previous = [], None
    for index in range(count + 1):
        fx, fy = CLICKS[index % len(CLICKS)]
        step = index % 4
        points = np.array([[fx * width, fy * height] for fx, fy in CLICKS[: step + 1]])
        labels = np.array([0 if i == 2 else 1 for i in range(step + 1)])
        start = time.perf_counter()
        out = decoder.run(
            embedding, points=points, labels=labels, mask_input=previous, orig_size=(height, width)
        )
        times.append((time.perf_counter() - start) * 1000)
        previous = None if step == 3 else out.low_res[out.best(multimask=step == 0)]
    return statistics.median(times[1:])


def bench_model(root: Path, model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    campaign = make_campaign(root, model, args.image, args.vit_b_checkpoint)
    token = add_annotator(campaign, "bench")
    rows = []
    with served(campaign) as url:
        for decoder, threads in SETTINGS:
            driver = start_chromium(Path(tempfile.mkdtemp(dir=root)))
            try:
                page = Page(driver, url, f"bench-{model}-{decoder}-{threads}")
                page.open(f"?threads={threads}&decoder={decoder}")
                page.sign_in(token)
                page.wait_ready()
                stats = page.stats()
                image = page.js("return window.saengine.app.lease.image")
                width, height = image["width"], image["height"]
                times = clicks_in_page(page, width, height, args.clicks)
                browser = driver.capabilities["browserVersion"]
            finally:
                driver.quit()
            work = stats["workSizes"][-1]
            native = native_baseline(campaign, decoder == "quant", work, args.clicks)
            rows.append(
                {
                    "model": model,
                    "decoder": decoder,
                    "threads": stats["threads"],
                    "isolated": stats["isolated"],
                    "work_size": work,
                    "median_ms": statistics.median(times),
                    "p90_ms": float(np.percentile(times, 90)),
                    "native_1_thread_ms": native,
                    "browser": f"Chromium {browser}",
                }
            )
            print(_row(rows[-1]), flush=True)
    return rows


def _row(row: dict[str, Any]) -> str:
    ratio = row["median_ms"] / row["native_1_thread_ms"]
    h, w = row["work_size"]
    return (
        f"| {row['model']} | {row['decoder']} | {row['threads']} | {w} x {h} | "
        f"{row['median_ms']:.1f} | {row['p90_ms']:.1f} | {row['native_1_thread_ms']:.1f} | "
        f"{ratio:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["bundled", "vit_b"])
    parser.add_argument("--clicks", type=int, default=24)
    parser.add_argument("--image", default="truck.jpg")
    parser.add_argument("--vit-b-checkpoint", default=None)
    parser.add_argument("--output", default="outputs/bench_webapp.json")
    args = parser.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    print(
        "| model | decoder | threads | work size | median ms | p90 ms | native 1 thread ms |",
        end="",
    )
    print(" page / native |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            rows += bench_model(Path(folder) / model, model, args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    result = {"machine": machine(), "load_average_end": os.getloadavg()[0], "rows": rows}
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
