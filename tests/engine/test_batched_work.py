"""The generation job's batch of images as its unit of work: batches never span two shards, a
shard packed from staged pieces is the same tar as one packed image by image, one bad image
of a batch is its own error row, and the pipeline's output does not depend on the batch
size (a local Ray with a stand-in model worker)."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch

from benchmarks.bench_scale import InstantModelWorker, make_inputs
from engine.dataset import STATUS_OK, read_manifest
from engine.dataset.writer import commit_shard, stage_image, stage_piece
from engine.generation.finish import finish_batch
from engine.generation.pipeline import Pipeline
from engine.generation.plan import ImagePlan, iter_plan, plan_batches, write_plan
from engine.images import ImageOptions
from engine.sources import ImageSource
from engine.storage import Storage
from engine.workers.decode import Failure, decode_sources
from engine.workers.pool import Resources
from stages.automatic import GeneratorConfig
from stages.automatic.columns import MaskColumns
from tests.engine.jobrun import dataset_files


def _plans(count: int, per_shard: int) -> list[ImagePlan]:
    return [
        ImagePlan(
            image_id=i + 1,
            source=ImageSource(source=f"/in/{i}.jpg", url=f"/in/{i}.jpg"),
            shard=i // per_shard,
            key=f"sa_{i + 1}",
        )
        for i in range(count)
    ]


@pytest.mark.parametrize(("count", "per_shard", "size"), [(10, 4, 3), (10, 4, 4), (7, 10, 2)])
def test_batches_never_span_two_shards(count: int, per_shard: int, size: int) -> None:
    found = list(plan_batches(_plans(count, per_shard), size))
    assert [plan for batch in found for plan in batch.plans()] == _plans(count, per_shard)
    for batch in found:
        # Each image's shard as the input plan gave it (image i + 1 is in shard i // per_shard).
        shards = {(plan.image_id - 1) // per_shard for plan in batch.plans()}
        assert 1 <= len(batch) <= size and shards == {batch.shard}
    shard_sizes = [min(per_shard, count - first) for first in range(0, count, per_shard)]
    assert len(found) == sum(-(-shard // size) for shard in shard_sizes)  # as few as can be


def _images(count: int) -> list[tuple[str, dict[str, bytes]]]:
    return [
        (f"sa_{i}", {"jpg": bytes([i]) * (300 * i + 7), "json": b'{"id":%d}' % i})
        for i in range(1, count + 1)
    ]


@pytest.mark.parametrize("splits", [[5], [2, 3], [1, 1, 1, 1, 1], []])
def test_a_shard_of_pieces_is_the_tar_of_single_images(tmp_path: Path, splits: list[int]) -> None:
    images = _images(sum(splits))
    rows = []
    single, pieced = Storage(str(tmp_path / "single")), Storage(str(tmp_path / "pieced"))
    for key, files in images:
        record = {"image": {"width": 1, "height": 1}, "annotations": []}
        rows.append(
            stage_image(
                single, 0, image_id=int(key[3:]), key=key, source=key, jpeg=b"", record=record
            )
        )
        single.write_bytes(f".staging/sa_000000/{key}.jpg", files["jpg"])
        single.write_bytes(f".staging/sa_000000/{key}.json", files["json"])
    first, pieces = 0, []
    for size in splits:
        stage_piece(pieced, 0, first + 1, images[first : first + size])
        pieces.append(first + 1)
        first += size
    commit_shard(single, 0, rows)
    commit_shard(pieced, 0, rows, list(reversed(pieces)))  # pieces in any order
    assert dataset_files(tmp_path / "pieced") == dataset_files(tmp_path / "single")
    assert not (tmp_path / "pieced" / ".staging" / "sa_000000").exists()


def test_one_bad_image_of_a_batch_is_its_own_error_row(tmp_path: Path) -> None:
    good = list(iter_plan(_written_plan(tmp_path, make_inputs(tmp_path, 3)), images_per_shard=9))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    bad = ImageSource(source=str(tmp_path / "bad.jpg"), url=str(tmp_path / "bad.jpg"))
    sources = [good[0].source, bad, good[1].source, good[2].source]
    plans = [ImagePlan(i + 1, source, 0, f"sa_{i + 1}") for i, source in enumerate(sources)]
    (batch,) = plan_batches(plans, 4)
    (two,) = plan_batches(plans[:2], 2)
    decoded = decode_sources(sources, ImageOptions(), {})
    candidates = InstantModelWorker().generate_batch(decoded)
    candidates[3] = Failure("generation failed: out of memory")
    storage = Storage(str(tmp_path / "out"))
    broken = finish_batch(
        two,
        decoded[:2],
        ["not mask columns", candidates[1]],  # type: ignore[list-item]
        storage=storage,
        generator_config=GeneratorConfig(),
    )
    assert broken[0].error.startswith("internal error: ") and "\n" not in broken[0].error
    assert broken[1].status == "error" and not list(tmp_path.glob("out/.staging/*/*"))
    rows = finish_batch(
        batch, decoded, candidates, storage=storage, generator_config=GeneratorConfig()
    )
    assert [row.status for row in rows] == [STATUS_OK, "error", STATUS_OK, "error"]
    assert isinstance(decoded[1], Failure) and rows[1].error == decoded[1].message
    assert rows[3].error == "generation failed: out of memory"
    commit_shard(storage, 0, rows, [1])
    assert read_manifest(storage).column("status").to_pylist() == [r.status for r in rows]
    assert [p.name for p in (tmp_path / "out").glob("sa_*.tar")] == ["sa_000000.tar"]


def _written_plan(tmp_path: Path, spec: str) -> Storage:
    storage = Storage(str(tmp_path / "plan"))
    write_plan(storage, [spec], {})
    return storage


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(plans: Storage, output: Path, *, batch: int, count: int, per_shard: int) -> int:
    worker = ray.remote(num_cpus=0)(InstantModelWorker)
    resources = Resources(cpus_per_actor=0, cpus_per_task=0.5, batch_images=batch)
    result = Pipeline(
        iter_plan(plans, images_per_shard=per_shard),
        shard_size=lambda s: min(per_shard, count - s * per_shard),
        workers=[worker.remote(), worker.remote()],
        storage=Storage(str(output)),
        generator_config=GeneratorConfig(),
        image_options=ImageOptions(),
        storage_options={},
        resources=resources,
    ).run()
    assert [info.num_images for info in result.shards] == [per_shard] * (count // per_shard) + [
        count % per_shard
    ]
    return result.ray_calls


def test_the_output_does_not_depend_on_the_batch_size(local_ray: None, tmp_path: Path) -> None:
    count, per_shard = 23, 10
    plans = _written_plan(tmp_path, make_inputs(tmp_path, count))
    calls = {
        batch: _run(plans, tmp_path / f"b{batch}", batch=batch, count=count, per_shard=per_shard)
        for batch in (1, 4, 16)
    }
    assert dataset_files(tmp_path / "b4") == dataset_files(tmp_path / "b1")
    assert dataset_files(tmp_path / "b16") == dataset_files(tmp_path / "b1")
    # three calls per batch (decode, model, finish) and one commit per shard
    assert calls == {1: 3 * 23 + 3, 4: 3 * (3 + 3 + 1) + 3, 16: 3 * (1 + 1 + 1) + 3}


def test_candidates_travel_unchanged(local_ray: None) -> None:
    """MaskColumns pickle as NumPy arrays (cheap for Ray to move): same values and types,
    and writable tensors even from Ray's read-only shared memory."""
    sent = MaskColumns(
        iou_preds=torch.rand(3),
        stability_score=torch.rand(3),
        points=torch.rand(3, 2, dtype=torch.float64),
        boxes=torch.arange(12).view(3, 4),
        crop_boxes=torch.arange(12).view(3, 4) * 2,
        rles=[{"size": [2, 2], "counts": [i, 4 - i]} for i in range(3)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it is given read-only memory
        received_both = [pickle.loads(pickle.dumps(sent)), ray.get(ray.put(sent))]
    for received in received_both:
        assert received.rles == sent.rles
        for name in ("iou_preds", "stability_score", "points", "boxes", "crop_boxes"):
            mine, theirs = getattr(received, name), getattr(sent, name)
            assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)
        received.boxes += 1  # writable, not a view of the sender's memory
        assert torch.equal(sent.boxes, torch.arange(12).view(3, 4))


@pytest.mark.parametrize(
    ("settings", "batch", "in_flight"),
    [
        ({}, 16, 48),
        ({"batch_images": 64, "model_actors": 2}, 64, 384),
        ({"max_in_flight": 5}, 5, 5),
    ],
)
def test_a_batch_never_exceeds_what_may_be_in_flight(
    settings: dict[str, int], batch: int, in_flight: int
) -> None:
    resources = Resources(**settings)  # type: ignore[arg-type]
    assert (resources.batch_size, resources.images_in_flight) == (batch, in_flight)


def test_a_batch_of_no_images_is_refused() -> None:
    with pytest.raises(ValueError, match="resources.batch_images must be >= 1, got 0"):
        Resources(batch_images=0)
