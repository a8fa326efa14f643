"""`saengine campaign create` plans images like `saengine generate` (tar shards and folders,
bad files as error rows, resumable) and publishes the model's decoder; `saengine campaign
embed` computes fp16 embeddings on a local Ray and resumes after kill -9."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.campaigns.campaign import Campaign
from engine.models import load_model, weights_sha256
from model import SamPredictor
from tests.engine.campaigns.campaignrun import create, query
from tests.engine.inputs import write_bad_inputs, write_good_photos
from tests.engine.jobrun import kill9, run_saengine, start_saengine, wait_for


def test_create_from_sa1b_tar_shards(scenes: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "campaign"
    token = create(folder, f"input={scenes['train']}/sa_*.tar", "model=bundled")
    assert len(token) > 20
    rows = query(folder, "SELECT key, source, status, width, height FROM images ORDER BY image_id")
    assert len(rows) == 24 and all(r[2] == "queued" and (r[3], r[4]) == (256, 256) for r in rows)
    first_tar = sorted(scenes["train"].glob("sa_*.tar"))[0]
    assert rows[0][1] == f"{first_tar}#sa_1.jpg"
    with tarfile.open(first_tar) as tar:
        member = tar.extractfile("sa_1.jpg")
        assert member is not None
        original = member.read()
    assert (folder / "images" / "sa_1.jpg").read_bytes() == original  # stored byte for byte
    sha = weights_sha256(load_model("vit_mini", "bundled"))
    assert query(folder, "SELECT version, sha256 FROM models") == [(0, sha)]
    decoder = onnx.load(str(folder / "models" / sha[:16] / "decoder.onnx"))
    assert [i.name for i in decoder.graph.input][:2] == ["image_embeddings", "point_coords"]
    assert (folder / "models" / sha[:16] / "decoder.quant.onnx").is_file()
    status = run_saengine("campaign", "status", str(folder))
    assert status.returncode == 0 and "24 queued" in status.stdout


def test_bad_files_become_error_rows_and_create_resumes(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_good_photos(photos, count=2)
    expected = write_bad_inputs(photos)
    folder = tmp_path / "campaign"
    args = (f"input={photos}", "model=bundled", "images.max_short_side=96")
    create(folder, *args)
    rows = {
        Path(r[0]).name: r[1:] for r in query(folder, "SELECT source, status, error FROM images")
    }
    for name, status in expected.items():
        assert rows[name][0] == ("queued" if status == "ok" else "error"), name
        assert (rows[name][1] != "") == (status == "error"), name
    stored = [r for r in query(folder, "SELECT width, height FROM images WHERE status = 'queued'")]
    assert all(min(size) <= 96 for size in stored)  # the shortest-side rule
    again = run_saengine("campaign", "create", str(folder), "progress=false", *args)
    assert again.returncode == 0 and "admin token" not in again.stdout
    other = run_saengine("campaign", "create", str(folder), *args[:-1], "images.max_short_side=64")
    assert other.returncode == 2 and "another images" in other.stderr
    missing = run_saengine("campaign", "status", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "not a campaign" in missing.stderr


@pytest.fixture
def photo_campaign(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    for copy in range(4):
        for path in write_good_photos(photos / f"set{copy}", count=3, long_side=120):
            shutil.move(path, path.with_name(f"{copy}_{path.name}"))
    folder = tmp_path / "campaign"
    create(folder, f"input={photos}", "model=demo", "resources.cpus_per_task=0.5")
    return folder


def test_embed_resumes_after_kill_9_with_each_image_once(
    photo_campaign: Path, tmp_path: Path
) -> None:
    folder = photo_campaign
    args = ("campaign", "embed", str(folder), "progress=false", "ray.num_cpus=2")
    job = start_saengine(*args, log=tmp_path / "embed.log")
    count = lambda: query(folder, "SELECT COUNT(*) FROM embeddings")[0][0]  # noqa: E731
    wait_for(lambda: count() >= 2, "two embeddings", job)
    kill9(job.pid)
    job.wait()
    assert 2 <= count() < 12, "the kill should land mid-run"
    result = run_saengine(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = query(folder, "SELECT image_id, model_sha256 FROM embeddings")
    assert len(rows) == len(set(rows)) == 12
    campaign = Campaign(folder)
    sam = load_model("vit_tiny", random_seed=0, sharpen=True)
    predictor = SamPredictor(sam)
    for key in ("sa_1", "sa_12"):
        from PIL import Image

        predictor.set_image(np.asarray(Image.open(folder / "images" / f"{key}.jpg").convert("RGB")))
        expected = predictor.get_image_embedding()[0].numpy().astype(np.float16)
        stored = campaign.embeddings(rows[0][1]).read(key)
        assert np.array_equal(stored, expected), key
