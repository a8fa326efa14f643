"""A campaign whose images, embeddings, decoders and exports live on object storage (a local
S3-compatible server, moto) while its database stays in the campaign folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.campaigns.campaignrun import create, query
from tests.engine.jobrun import run_saengine
from tests.engine.test_object_storage import endpoint, monkeypatch_module, s3fs  # noqa: F401

pytestmark = pytest.mark.slow


def test_campaign_data_on_s3(endpoint: str, scenes: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
    fs.mkdir("campaigns")
    folder = tmp_path / "campaign"
    options = f"+storage_options.endpoint_url={endpoint}"
    create(
        folder,
        f"input={sorted(scenes['train'].glob('sa_*.tar'))[0]}",
        "model=bundled",
        "onnx.quantize=false",
        "data=s3://campaigns/one",
        options,
    )
    assert not (folder / "images").exists()
    assert len(fs.ls("campaigns/one/images")) == 8
    sha = query(folder, "SELECT sha256 FROM models")[0][0]
    assert fs.exists(f"campaigns/one/models/{sha[:16]}/decoder.onnx")
    embedded = run_saengine("campaign", "embed", str(folder), "progress=false", "ray.num_cpus=2")
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    assert len(fs.ls(f"campaigns/one/embeddings/{sha[:16]}")) == 8
    simulated = run_saengine(
        "campaign",
        "simulate",
        str(folder),
        f"truth={scenes['train']}",
        "annotators=1",
        "max_images=2",
    )
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    masks = query(folder, "SELECT COUNT(*) FROM masks WHERE state = 'accepted'")[0][0]
    assert masks >= 4
    exported = run_saengine(
        "campaign", "export", str(folder), "output=s3://campaigns/export", options
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    inspected = run_saengine("inspect", "s3://campaigns/export", options)
    assert inspected.returncode == 0, inspected.stdout[-2000:]
    summary = json.loads(fs.cat("campaigns/export/summary.json"))
    assert summary["masks"] == masks and summary["images_ok"] >= 2
