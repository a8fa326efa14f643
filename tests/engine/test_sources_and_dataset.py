"""Input listing, atomic storage, shard packing and the manifest."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from engine.dataset import (
    ManifestRow,
    committed_shards,
    read_manifest,
    staged_path,
    write_manifest_part,
)
from engine.dataset.writer import pack_shard
from engine.sources import InputError, list_sources, sources_digest
from engine.storage import Storage


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_directory_is_listed_recursively_sorted_images_only(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.PNG", "sub/deeper/c.jpeg", "notes.txt", "sub/x.json"):
        _touch(tmp_path / name)
    sources = list_sources(str(tmp_path))
    assert [Path(s.source).relative_to(tmp_path).as_posix() for s in sources] == [
        "a.PNG",
        "b.jpg",
        "sub/deeper/c.jpeg",
    ]


def test_glob_list_file_and_duplicates(tmp_path: Path) -> None:
    for name in ("one.jpg", "two.jpg", "three.png"):
        _touch(tmp_path / "imgs" / name)
    listing = _touch(tmp_path / "list.txt", b"imgs/two.jpg\n# comment\n\nimgs/missing.jpg\n")
    sources = list_sources([str(tmp_path / "imgs" / "*.jpg"), str(listing)])
    names = [Path(s.source).name for s in sources]
    assert names == ["missing.jpg", "one.jpg", "two.jpg"]  # two.jpg once
    missing = sources[0]
    with pytest.raises(OSError):
        missing.read_bytes()


def test_tar_members_are_read_by_byte_range(tmp_path: Path) -> None:
    contents = {"sa_1.jpg": b"first image", "sa_1.json": b"{}", "sa_2.jpg": b"second" * 300}
    with tarfile.open(tmp_path / "sa_000000.tar", "w") as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sources = list_sources(str(tmp_path / "sa_000000.tar"))
    assert [s.source.split("#")[1] for s in sources] == ["sa_1.jpg", "sa_2.jpg"]
    assert [s.read_bytes() for s in sources] == [contents["sa_1.jpg"], contents["sa_2.jpg"]]


def test_nothing_found_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        list_sources(str(tmp_path / "nope"))
    _touch(tmp_path / "empty" / "readme.md")
    with pytest.raises(InputError, match="no images"):
        list_sources(str(tmp_path / "empty"))


def test_digest_depends_on_order_and_names(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg"):
        _touch(tmp_path / name)
    sources = list_sources(str(tmp_path))
    assert sources_digest(sources) != sources_digest(sources[::-1])
    assert sources_digest(sources) == sources_digest(list_sources(str(tmp_path)))


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    with pytest.raises(RuntimeError), storage.open_atomic("sa_000000.tar") as handle:
        handle.write(b"half a shard")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    storage.write_bytes("dir/file.bin", b"data")
    assert (tmp_path / "dir" / "file.bin").read_bytes() == b"data"


def _row(image_id: int, status: str = "ok") -> ManifestRow:
    return ManifestRow(
        image_id=image_id,
        source=f"/in/{image_id}.jpg",
        shard="sa_000003",
        key=f"sa_{image_id}",
        width=10,
        height=20,
        num_masks=image_id,
        status=status,
        error="" if status == "ok" else "cannot read",
    )


def test_shard_tar_is_deterministic_and_ordered(tmp_path: Path) -> None:
    outputs = []
    for attempt in ("a", "b"):
        storage = Storage(str(tmp_path / attempt))
        for key in ("sa_2", "sa_1"):
            storage.write_bytes(staged_path(3, key, "jpg"), f"jpg of {key}".encode())
            storage.write_bytes(staged_path(3, key, "json"), f'{{"k":"{key}"}}'.encode())
        pack_shard(storage, 3, ["sa_1", "sa_2"])
        outputs.append((tmp_path / attempt / "sa_000003.tar").read_bytes())
    assert outputs[0] == outputs[1]
    with tarfile.open(fileobj=io.BytesIO(outputs[0])) as tar:
        assert tar.getnames() == ["sa_1.jpg", "sa_1.json", "sa_2.jpg", "sa_2.json"]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


def test_manifest_parts_are_the_commit_markers(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    assert committed_shards(storage) == [] and read_manifest(storage).num_rows == 0
    write_manifest_part(storage, 3, [_row(7), _row(8, "error")])
    write_manifest_part(storage, 1, [_row(2)])
    assert committed_shards(storage) == [1, 3]
    table = read_manifest(storage)
    assert table.column("image_id").to_pylist() == [2, 7, 8]
    assert table.column("status").to_pylist() == ["ok", "ok", "error"]
    assert table.column("error").to_pylist()[2] == "cannot read"
