"""Input from and output to object storage: a local S3-compatible server (moto) started by
the test, reached through fsspec (s3fs) by the job's driver and its Ray workers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.engine.inputs import write_bad_inputs, write_good_photos
from tests.engine.jobrun import FAST, run_saengine

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in CREDENTIALS.items():
        monkeypatch_module.setenv(name, value)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_generate_from_and_to_s3(endpoint: str, tmp_path: Path) -> None:
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
    fs.mkdir("bucket")
    local = tmp_path / "local"
    write_good_photos(local / "photos", count=2)
    write_bad_inputs(local / "bad")
    (local / "bad" / "huge.png").unlink()
    fs.put(str(local) + "/", "bucket/in/", recursive=True)
    option = f"+storage_options.endpoint_url={endpoint}"
    result = run_saengine(
        "generate",
        "input=s3://bucket/in",
        "output=s3://bucket/out",
        "images_per_shard=4",
        option,
        *FAST,
        env=CREDENTIALS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dataset: s3://bucket/out" in result.stdout
    assert sorted(fs.ls("bucket/out/manifest")) == [
        "bucket/out/manifest/sa_000000.parquet",
        "bucket/out/manifest/sa_000001.parquet",
    ]
    with fs.open("bucket/out/manifest/sa_000000.parquet", "rb") as handle:
        rows = pq.read_table(handle).to_pylist()
    assert rows[0]["source"].startswith("s3://bucket/in/")
    statuses = {row["source"].rsplit("/", 1)[1]: row["status"] for row in rows}
    assert statuses == {
        "cmyk.jpg": "ok",
        "corrupt.jpg": "error",
        "gray16.png": "ok",
        "rotated.jpg": "ok",
    }
    assert fs.exists("bucket/out/sa_000001.tar") and fs.exists("bucket/out/summary.json")
    assert not fs.exists("bucket/out/.staging")
    inspected = run_saengine("inspect", "s3://bucket/out", option, env=CREDENTIALS)
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    assert "manifest: 7 images (2 failed), 2 shards" in inspected.stdout
