"""Stage 1 end to end on synthetic scenes, on a local Ray with CPUs: create, embed, scripted
annotators, retraining rounds triggered by collected masks while the server runs, the
campaign's model switched after a promoted round, and the statistics per round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.campaigns.campaign import Campaign
from engine.campaigns.server_process import start_server
from engine.campaigns.versions import newest_embedded_version
from tests.engine.campaigns.campaignrun import SHORT_ROUND, create, query, simulate
from tests.engine.jobrun import processes_named, run_saengine, wait_for

pytestmark = pytest.mark.slow


def test_stage_1_end_to_end_with_triggered_rounds_that_switch_the_model(
    scenes: dict[str, Path], tmp_path: Path
) -> None:
    """Annotators work in batches while the server runs; a round triggers after every 12
    accepted masks and is promoted (`rounds.eval.promote=always`: a few CPU steps do not
    reliably beat the bundled model, and this test is about what follows a promotion; the
    metric's decision is tested with the training rounds). After a promotion the campaign
    exports the new model's decoder, the embed job recomputes the embeddings of the images
    not yet done, and the next leases are served with the new model. Stats report each
    model version's clicks and time per mask, and the export is a valid SA-1B dataset."""
    folder = tmp_path / "campaign"
    create(
        folder,
        f"input={scenes['train']}/sa_*.tar",
        "model=bundled",
        "onnx.quantize=false",
        "retrain_every=12",
        "rounds.eval.promote=always",
        f"rounds.eval_data=[{scenes['val']}]",
        "embed.ahead=24",
        "ray.num_cpus=2",
        *SHORT_ROUND,
    )
    campaign = Campaign(folder)
    server, url = start_server(campaign)  # with the embed job and rounds beside it
    try:
        wait_for(lambda: query(folder, "SELECT COUNT(*) FROM embeddings")[0][0] >= 24, "embeddings")
        simulate(
            folder, scenes["train"], url, "annotators=2", "max_images=4", "wait_for_rounds=true"
        )
        rounds = query(folder, "SELECT status, promoted, detail FROM rounds")
        assert rounds and rounds[0][:2] == ("done", 1), rounds
        versions = query(folder, "SELECT version, sha256, round FROM models ORDER BY version")
        assert len(versions) >= 2 and versions[1][2] == "round_001"
        new_sha = versions[-1][1]
        assert (folder / "models" / new_sha[:16] / "decoder.onnx").is_file()
        waiting = query(folder, "SELECT COUNT(*) FROM images WHERE status = 'queued'")[0][0]
        wait_for(
            lambda: (
                query(folder, "SELECT COUNT(*) FROM embeddings WHERE model_sha256 = ?", new_sha)[0][
                    0
                ]
                >= waiting
            ),
            "embeddings of the new model for the images not yet done",
        )
        simulate(folder, scenes["train"], url, "annotators=1", "max_images=2", "seed=1")
        used = query(
            folder,
            "SELECT DISTINCT m.model_sha256 FROM masks m JOIN images i USING (image_id) "
            "WHERE i.finished_at = (SELECT MAX(finished_at) FROM images)",
        )
        assert used == [(new_sha,)], "masks made after the switch are assisted by the new model"
        simulate(
            folder, scenes["train"], url, "annotators=2", "max_images=4", "wait_for_rounds=true"
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    wait_for(lambda: not processes_named(f"campaign embed {folder}"), "the embed job to end")
    wait_for(lambda: not processes_named(f"campaign round {folder}"), "rounds to end")
    done = query(folder, "SELECT COUNT(*) FROM rounds WHERE status = 'done'")[0][0]
    assert done >= 2
    _a_decoder_round_keeps_the_embeddings(folder)
    result = run_saengine("campaign", "stats", str(folder), "json=true")
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    masks = query(folder, "SELECT COUNT(*) FROM masks WHERE state = 'accepted'")[0][0]
    assert sum(row["manual_masks"] for row in stats["rounds"].values()) == masks
    assert sum(row["manual_masks"] for row in stats["annotators"].values()) == masks
    assert len([row for row in stats["rounds"].values() if row["manual_masks"]]) >= 2
    first = stats["rounds"]["0"]
    assert first["clicks_per_mask"] >= 1 and first["median_seconds_per_mask"] > 0
    assert (folder / "stats.png").stat().st_size > 10_000
    exported = run_saengine("campaign", "export", str(folder), f"output={tmp_path / 'export'}")
    assert exported.returncode == 0, exported.stderr[-2000:]
    inspected = run_saengine("inspect", str(tmp_path / "export"))
    assert inspected.returncode == 0, inspected.stdout[-2000:]


def _a_decoder_round_keeps_the_embeddings(folder: Path) -> None:
    """A decoder round (`campaign round kind=decoder`) on the same campaign: the promoted
    model's decoder is exported, it keeps its parent's image encoder and reads its
    parent's embedding files (each embedded image has a row for it at once, no file is
    written), and the next leases are served with it."""
    (old_sha,) = query(folder, "SELECT sha256 FROM models ORDER BY version DESC LIMIT 1")[0]
    embedded = run_saengine("campaign", "embed", str(folder), "progress=false")
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    files = {p: p.stat().st_mtime_ns for p in (folder / "embeddings").rglob("*.npy")}
    result = run_saengine("campaign", "round", str(folder), "kind=decoder")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(decoder round): promoted" in result.stdout, result.stdout
    new_sha, round_name, owner = query(
        folder, "SELECT sha256, round, embeddings_sha256 FROM models ORDER BY version DESC"
    )[0]
    assert new_sha != old_sha and owner is not None
    assert (
        json.loads(query(folder, "SELECT detail FROM rounds ORDER BY round_id DESC")[0][0])["kind"]
        == "decoder"
    )
    record = json.loads((folder / "registry" / "rounds" / round_name / "round.json").read_text())
    assert record["kind"] == "decoder"
    assert (folder / "models" / new_sha[:16] / "decoder.onnx").is_file()
    count = "SELECT COUNT(*) FROM embeddings WHERE model_sha256 = ?"
    assert query(folder, count, new_sha) == query(folder, count, old_sha) != [(0,)]
    now = {p: p.stat().st_mtime_ns for p in (folder / "embeddings").rglob("*.npy")}
    assert now == files, "no embedding was written again"
    campaign = Campaign(folder)
    image_id, key = query(
        folder,
        "SELECT i.image_id, i.key FROM images i JOIN embeddings e USING (image_id) "
        "WHERE i.status = 'queued' AND e.model_sha256 = ?",
        old_sha,
    )[0]
    with campaign.db.read() as db:
        served = newest_embedded_version(db, image_id)
    assert served is not None and served["sha256"] == new_sha  # what a lease serves
    store = campaign.embeddings(new_sha)
    assert store.read_bytes(key) == campaign.embeddings(old_sha).read_bytes(key)
