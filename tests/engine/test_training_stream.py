"""The streaming training reader: webdataset.WebDataset over this project's shards and SA-1B's
own tars, split by node and by DataLoader worker, seeded shard order, resumable."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.dataset.reader import DatasetError, build_index, shard_urls
from engine.training.reader import decode_sample, load_sample, stream_samples
from engine.training.synthetic import (
    SceneOptions,
    make_scene,
    scene_record,
    write_synthetic_dataset,
)

NUM_IMAGES, PER_SHARD = 24, 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("stream")
    write_synthetic_dataset(
        str(root / "data"),
        num_images=NUM_IMAGES,
        images_per_shard=PER_SHARD,
        options=SceneOptions(size=32, objects=(1, 2), min_area=20),
    )
    return shard_urls([str(root / "data")])


def _keys(dataset: object) -> list[str]:
    return [sample.key for sample in dataset]  # type: ignore[attr-defined]


def test_shards_are_found_in_order(shards: list[str]) -> None:
    assert [Path(url).name for url in shards] == [f"sa_{i:06d}.tar" for i in range(8)]


def test_ranks_split_the_shards_and_cover_every_sample_once(shards: list[str]) -> None:
    per_rank = [
        _keys(stream_samples(shards, seed=1, epoch=0, rank=r, world_size=3)) for r in range(3)
    ]
    everything = [key for keys in per_rank for key in keys]
    assert sorted(everything) == sorted(f"sa_{i}" for i in range(1, NUM_IMAGES + 1))
    assert all(len(keys) % PER_SHARD == 0 and keys for keys in per_rank)


def test_the_shard_order_is_seeded_per_epoch(shards: list[str]) -> None:
    def order(seed: int, epoch: int) -> list[str]:
        return _keys(stream_samples(shards, seed=seed, epoch=epoch))

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 0)) == sorted(order(1, 1))
    first = order(1, 0)
    shard_of = [int(key[3:]) - 1 for key in first[::PER_SHARD]]
    assert sorted(i // PER_SHARD for i in shard_of) == list(range(8))


def test_dataloader_workers_split_a_ranks_shards(shards: list[str]) -> None:
    dataset = stream_samples(shards, seed=3, epoch=0, rank=1, world_size=2)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=2, collate_fn=lambda sample: sample
    )
    assert sorted(sample.key for sample in loader) == sorted(_keys(dataset))


def test_a_stream_resumes_where_it_stopped(shards: list[str]) -> None:
    full = _keys(stream_samples(shards, seed=4, epoch=2, rank=0, world_size=2))
    resumed = _keys(stream_samples(shards, seed=4, epoch=2, rank=0, world_size=2, skip=5))
    assert resumed == full[5:]


def test_too_few_shards_for_the_ranks(shards: list[str]) -> None:
    with pytest.raises(DatasetError, match="8 shard"):
        stream_samples(shards, seed=0, epoch=0, rank=0, world_size=9)


def test_a_streamed_sa1b_tar_decodes_like_the_index(tmp_path: Path) -> None:
    """A tar as SA-1B ships them (members ./sa_<id>.jpg, ./sa_<id>.json)."""
    scene = make_scene(np.random.default_rng(5), SceneOptions(size=64, min_area=10))
    buffer = io.BytesIO()
    from PIL import Image

    Image.fromarray(scene.image).save(buffer, format="JPEG")
    files = {"./sa_7.jpg": buffer.getvalue(), "./sa_7.json": json.dumps(scene_record(scene, 7))}
    tar_path = tmp_path / "sa_000020.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in files.items():
            raw = data if isinstance(data, bytes) else data.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    (streamed,) = list(stream_samples(shard_urls([str(tar_path)]), seed=0, epoch=0))
    assert streamed.key == "sa_7"
    a = decode_sample(
        streamed.key, streamed.jpg, streamed.json, image_size=96, max_masks=3,
        rng=np.random.default_rng(1),
    )  # fmt: skip
    (entry,) = build_index([str(tar_path)])
    b = load_sample(entry, image_size=96, max_masks=3, rng=np.random.default_rng(1))
    assert a.key == b.key and torch.equal(a.image, b.image) and torch.equal(a.masks, b.masks)
    assert len(a.masks) == min(3, len(scene.masks))
