"""A campaign worked by scripted annotators over HTTP against a real server: 8 concurrent
annotators, the server killed with kill -9 mid-run and restarted, and the queue's promises
checked from the database (no image leased to two at once, every acknowledged mask stored
exactly once, every image finished)."""

from __future__ import annotations

import json
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from engine.campaigns.campaign import Campaign
from engine.campaigns.server_process import start_server
from tests.engine.campaigns.campaignrun import create, query, serve_and_simulate
from tests.engine.jobrun import (
    TIMEOUT_S,
    kill9,
    processes_named,
    run_saengine,
    saengine_command,
    wait_for,
)

pytestmark = pytest.mark.slow


def _acknowledged(folder: Path) -> list[dict]:
    entries = []
    for path in sorted((folder / "runs").glob("simulate-*.jsonl")):
        entries += [json.loads(line) for line in path.read_text().splitlines() if line]
    return entries


def _check_leases_never_overlap(folder: Path) -> None:
    events = query(
        folder,
        "SELECT image_id, kind, annotator_id FROM events WHERE kind IN "
        "('lease', 'finish_image', 'skip_image', 'lease_expired') ORDER BY event_id",
    )
    holder: dict[int, int | None] = defaultdict(lambda: None)
    for image_id, kind, annotator in events:
        if kind == "lease":
            assert holder[image_id] is None, f"image {image_id} leased to two at once"
            holder[image_id] = annotator
        else:
            assert holder[image_id] == annotator, (image_id, kind)
            holder[image_id] = None


def test_eight_annotators_and_a_server_killed_mid_run(
    scenes: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "campaign"
    create(folder, f"input={scenes['train']}/sa_*.tar", "model=bundled", "onnx.quantize=false")
    embedded = run_saengine("campaign", "embed", str(folder), "progress=false", "ray.num_cpus=2")
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    campaign = Campaign(folder)
    server, url = start_server(campaign, "rounds=false")  # with the embed job beside it
    port = int(url.rsplit(":", 1)[1])
    wait_for(lambda: processes_named(f"campaign embed {folder}"), "the embed job", server)
    log = (tmp_path / "simulate.log").open("w")
    simulate = subprocess.Popen(
        [
            *saengine_command(),
            "campaign",
            "simulate",
            str(folder),
            f"truth={scenes['train']}",
            "annotators=8",
            f"server={url}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: len(_acknowledged(folder)) >= 10, "ten acknowledged masks", simulate)
    kill9(server.pid)
    server.wait()
    acknowledged_at_kill = len(_acknowledged(folder))
    # the server's background job ends with it (it would otherwise hold the embed lock)
    wait_for(lambda: not processes_named(f"campaign embed {folder}"), "the embed job to end")
    time.sleep(1.0)
    server, _ = start_server(campaign, "embed=false", "rounds=false", port=port)
    try:
        assert simulate.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "simulate.log").read_text()[
            -3000:
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)
    acknowledged = _acknowledged(folder)
    assert len(acknowledged) > acknowledged_at_kill, "work went on after the restart"
    ids = [entry["mask_id"] for entry in acknowledged]
    assert len(ids) == len(set(ids)), "a mask acknowledged twice"
    stored = {row[0] for row in query(folder, "SELECT mask_id FROM masks WHERE state = 'accepted'")}
    assert stored == set(ids), "every acknowledged mask is stored, and nothing else"
    pairs = query(folder, "SELECT annotator_id, client_id FROM masks")
    assert len(pairs) == len(set(pairs))
    _check_leases_never_overlap(folder)
    statuses = query(folder, "SELECT status, COUNT(*) FROM images GROUP BY status")
    assert statuses == [("done", 24)]
    annotators = query(folder, "SELECT COUNT(DISTINCT annotator_id) FROM masks")[0][0]
    assert annotators >= 4, "the annotators worked concurrently"


def _simulated_masks(folder: Path, truth: Path, shard: Path, annotators: int) -> list[tuple]:
    create(folder, f"input={shard}", "model=bundled", "onnx.quantize=false")
    serve_and_simulate(folder, truth, f"annotators={annotators}", "seed=3", serve=("rounds=false",))
    assert query(folder, "SELECT COUNT(*) FROM images WHERE status != 'done'") == [(0,)]
    return query(
        folder,
        "SELECT image_id, counts, clicks, annotator_id FROM masks WHERE state = 'accepted' "
        "ORDER BY image_id, mask_id",
    )


def test_a_simulation_repeats_whichever_annotator_leases_an_image(
    scenes: dict[str, Path], tmp_path: Path
) -> None:
    """Same seed, same model: four concurrent annotators click what one annotator alone
    clicks on every image, though which of them leases which image is a race."""
    shard = scenes["train"] / "sa_000000.tar"
    together = _simulated_masks(tmp_path / "four", scenes["train"], shard, annotators=4)
    alone = _simulated_masks(tmp_path / "one", scenes["train"], shard, annotators=1)
    assert len({row[3] for row in together}) > 1, "the four annotators shared the images"
    assert len({row[3] for row in alone}) == 1
    assert together, "the annotators made masks"
    assert [row[:3] for row in together] == [row[:3] for row in alone]
