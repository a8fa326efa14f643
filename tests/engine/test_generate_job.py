"""`saengine generate` end to end on an embedded local Ray with 2 CPUs, as users run it:
the output contract, resume after kill -9 of the driver and of a model worker (byte for
byte equal to an uninterrupted run), refusal of a changed config, bad inputs, tar shard
input, and inspect on good and damaged datasets."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.engine.inputs import write_bad_inputs, write_good_photos
from tests.engine.jobrun import (
    FAST,
    TIMEOUT_S,
    committed,
    dataset_files,
    kill9,
    processes_named,
    run_saengine,
    start_saengine,
    wait_for,
)

NUM_PHOTOS = 4


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_good_photos(folder / "nested", count=NUM_PHOTOS)
    return folder


def _args(photos: Path, output: Path, *extra: str) -> list[str]:
    return ["generate", f"input={photos}", f"output={output}", "images_per_shard=1", *FAST, *extra]


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("reference") / "dataset"
    result = run_saengine(*_args(photos, output))
    assert result.returncode == 0, result.stderr
    assert f"saengine inspect {output}" in result.stdout
    return output


def _tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_dataset_follows_the_contract(reference: Path, photos: Path) -> None:
    manifest = pq.read_table(reference / "manifest").sort_by("image_id").to_pylist()
    sources = sorted(str(p) for p in (photos / "nested").glob("*.jpg"))
    assert [row["source"] for row in manifest] == sources
    assert [row["image_id"] for row in manifest] == list(range(1, NUM_PHOTOS + 1))
    assert all(row["status"] == "ok" and row["error"] == "" for row in manifest)
    shards = sorted(reference.glob("sa_*.tar"))
    assert [p.name for p in shards] == [f"sa_{i:06d}.tar" for i in range(NUM_PHOTOS)]
    for row, shard in zip(manifest, shards):
        assert row["shard"] == shard.stem
        assert _tar_members(shard) == [f"{row['key']}.jpg", f"{row['key']}.json"]
        with tarfile.open(shard) as tar:
            record = json.load(tar.extractfile(f"{row['key']}.json"))  # type: ignore[arg-type]
            image = Image.open(io.BytesIO(tar.extractfile(f"{row['key']}.jpg").read()))  # type: ignore[union-attr]
        assert record["image"] == {
            "image_id": row["image_id"],
            "width": image.width,
            "height": image.height,
            "file_name": f"{row['key']}.jpg",
        }
        assert min(image.size) == 96 and (row["width"], row["height"]) == image.size
        assert len(record["annotations"]) == row["num_masks"] > 0
        for rank, annotation in enumerate(record["annotations"]):
            assert annotation["id"] == row["image_id"] * 100_000 + rank
            assert annotation["segmentation"]["size"] == [image.height, image.width]
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["images_ok"] == NUM_PHOTOS
    assert summary["masks"] == sum(row["num_masks"] for row in manifest)
    assert summary["model"]["name"] == "vit_tiny" and len(summary["model"]["weights_sha256"]) == 64
    assert summary["packages"]["torch"] != "unknown"
    (run,) = list((reference / "runs").iterdir())
    assert "images_per_shard: 1" in (run / "config.yaml").read_text()
    assert "- generator=demo" in (run / "overrides.yaml").read_text()
    busy = json.loads((run / "run.json").read_text())["model_busy_fraction"]
    assert 0.0 < busy <= 1.0
    assert not (reference / ".staging").exists()


def test_inspect_passes_and_draws(reference: Path, tmp_path: Path) -> None:
    pictures = tmp_path / "pictures"
    result = run_saengine("inspect", str(reference), f"pictures={pictures}", "num_pictures=2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems found" in result.stdout
    names = sorted(p.name for p in pictures.iterdir())
    assert names == [
        "mask_centres.png",
        "mask_sizes.png",
        "masks_per_image.png",
        "sa_1_masks.jpg",
        "sa_2_masks.jpg",
    ]


def test_inspect_finds_damage(reference: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(reference, damaged)
    shard = damaged / "sa_000001.tar"
    with tarfile.open(shard) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    name = next(n for n in files if n.endswith(".json"))
    record = json.loads(files[name])
    record["annotations"][0]["area"] += 5
    record["annotations"][0]["bbox"][2] += 1
    files[name] = json.dumps(record).encode()
    with tarfile.open(shard, "w") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (damaged / "sa_000002.tar").unlink()
    result = run_saengine("inspect", str(damaged))
    assert result.returncode == 1
    assert "area" in result.stdout and "bbox" in result.stdout
    assert "sa_000002.tar: missing" in result.stdout


def _start_until_first_shard(photos: Path, output: Path, log: Path) -> subprocess.Popen:
    job = start_saengine(*_args(photos, output), log=log)
    wait_for(lambda: committed(output) >= 1, "a committed shard", job)
    return job


def test_resume_after_kill_9_of_the_driver_is_byte_identical(
    reference: Path, photos: Path, tmp_path: Path
) -> None:
    output = tmp_path / "dataset"
    job = _start_until_first_shard(photos, output, tmp_path / "log")
    kill9(job.pid)
    job.wait()
    assert 1 <= committed(output) < NUM_PHOTOS, "the kill should land mid-run"
    result = run_saengine(*_args(photos, output))
    assert result.returncode == 0, result.stderr
    assert "from earlier runs" in result.stdout
    assert dataset_files(output) == dataset_files(reference)


def test_kill_9_of_a_model_worker_is_survived(
    reference: Path, photos: Path, tmp_path: Path
) -> None:
    output = tmp_path / "dataset"
    job = _start_until_first_shard(photos, output, tmp_path / "log")
    workers = processes_named("ray::ModelWorker")
    assert workers, "no model worker process found"
    kill9(workers[0])
    assert job.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "log").read_text()[-2000:]
    assert dataset_files(output) == dataset_files(reference)


# One shard of the four photos in batches of two, one batch in flight: a kill lands after
# the first batch is staged as a piece and before the shard is committed.
BATCHED = ("images_per_shard=4", "resources.batch_images=2", "resources.max_in_flight=2")


def _staged_pieces(output: Path) -> int:
    return len(list((output / ".staging").glob("*/*.tar")))


def test_kill_9_mid_shard_with_batches_of_several_images(photos: Path, tmp_path: Path) -> None:
    """A staged batch of an uncommitted shard is not trusted: after kill -9 of the driver a
    rerun, and after kill -9 of a model worker the job itself, give what one run gives."""
    whole = tmp_path / "whole"
    result = run_saengine(*_args(photos, whole, *BATCHED))
    assert result.returncode == 0, result.stderr
    assert len(list(whole.glob("sa_*.tar"))) == 1
    driver_killed = tmp_path / "driver-killed"
    job = start_saengine(*_args(photos, driver_killed, *BATCHED), log=tmp_path / "log-1")
    wait_for(lambda: _staged_pieces(driver_killed) >= 1, "a staged batch", job)
    kill9(job.pid)
    job.wait()
    assert committed(driver_killed) == 0, "the kill should land before the shard's commit"
    result = run_saengine(*_args(photos, driver_killed, *BATCHED))
    assert result.returncode == 0, result.stderr
    assert dataset_files(driver_killed) == dataset_files(whole)
    worker_killed = tmp_path / "worker-killed"
    job = start_saengine(*_args(photos, worker_killed, *BATCHED), log=tmp_path / "log-2")
    wait_for(lambda: _staged_pieces(worker_killed) >= 1, "a staged batch", job)
    kill9(processes_named("ray::ModelWorker")[0])
    assert job.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "log-2").read_text()[-2000:]
    assert dataset_files(worker_killed) == dataset_files(whole)


def test_changed_config_is_refused_unless_forced(reference: Path, photos: Path) -> None:
    before = dataset_files(reference)
    result = run_saengine(*_args(photos, reference, "generator.pred_iou_thresh=0.6"))
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert "another config" in error and "generator.pred_iou_thresh: 0.15 -> 0.6" in error
    assert dataset_files(reference) == before
    again = run_saengine(*_args(photos, reference))
    assert again.returncode == 0 and f"({NUM_PHOTOS} from earlier runs)" in again.stdout
    assert dataset_files(reference) == before


def test_bad_inputs_become_error_rows(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    expected = write_bad_inputs(inputs)
    write_good_photos(inputs, count=1)
    expected["dog.jpg"] = "ok"
    output = tmp_path / "dataset"
    result = run_saengine(
        "generate", f"input={inputs}", f"output={output}", "images_per_shard=3", *FAST
    )
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(output / "manifest").to_pylist()
    assert {Path(r["source"]).name: r["status"] for r in rows} == expected
    for row in rows:
        if row["status"] == "error":
            assert row["error"] and "\n" not in row["error"]
    by_name = {Path(r["source"]).name: r for r in rows}
    assert "decompression bomb" in by_name["huge.png"]["error"]
    assert "truncated" in by_name["truncated.jpg"]["error"]
    assert by_name["rotated.jpg"]["height"] > by_name["rotated.jpg"]["width"]
    in_tars = [n for tar in sorted(output.glob("sa_*.tar")) for n in _tar_members(tar)]
    ok_keys = sorted(r["key"] for r in rows if r["status"] == "ok")
    assert sorted(in_tars) == sorted(f"{k}.{e}" for k in ok_keys for e in ("jpg", "json"))
    assert "3 failed" in result.stdout
    assert run_saengine("inspect", str(output)).returncode == 0


def test_tar_shards_can_be_reprocessed(reference: Path, tmp_path: Path) -> None:
    output = tmp_path / "again"
    result = run_saengine("generate", f"input={reference}/sa_*.tar", f"output={output}", *FAST)
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(output / "manifest").sort_by("image_id").to_pylist()
    assert [r["source"].rsplit("#", 1)[1] for r in rows] == [
        f"sa_{i}.jpg" for i in range(1, NUM_PHOTOS + 1)
    ]
    assert all(r["status"] == "ok" for r in rows)


def test_a_second_job_into_a_running_jobs_output_is_refused(
    reference: Path, photos: Path, tmp_path: Path
) -> None:
    output = tmp_path / "dataset"
    first = start_saengine(*_args(photos, output), log=tmp_path / "first.log")
    wait_for(lambda: (output / ".lock").exists(), "the first job's lock", first)
    second = run_saengine(*_args(photos, output))
    assert second.returncode == 2, second.stderr
    (line,) = [x for x in second.stderr.splitlines() if x.startswith("saengine: error:")]
    assert "in use by another job" in line and f"pid {first.pid} on " in line
    assert first.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert dataset_files(output) == dataset_files(reference)


def test_an_internal_error_names_its_traceback_log(photos: Path, tmp_path: Path) -> None:
    """A damaged plan in the output is not the user's input: one line, and the log."""
    output = tmp_path / "dataset"
    output.mkdir()
    plan = {"input": [str(photos)], "num_images": NUM_PHOTOS, "sources_sha256": "0" * 64}
    (output / "plan.json").write_text(json.dumps(plan))
    (output / "plan.parquet").write_bytes(b"not a parquet file")
    result = run_saengine(*_args(photos, output))
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("saengine: error:")]
    assert line.startswith("saengine: error: internal error: ") and "Traceback" not in result.stderr
    log = Path(line.rsplit("full traceback in ", 1)[1].rstrip(")"))
    assert log.parent.parent == output / "runs" and log.name == "error.log"
    assert "Traceback" in log.read_text() and "plan" in log.read_text()
