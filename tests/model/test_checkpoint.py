from __future__ import annotations

import pytest
import torch

from model import CheckpointError, build_sam, build_sam_from_spec, known_models
from model.build import MODEL_REGISTRY
from model.checkpoint import OFFICIAL_CHECKPOINTS, download, sha256_of


@pytest.fixture(scope="module")
def tiny_state_dict():
    return build_sam("vit_tiny").state_dict()


def save(tmp_path, obj, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vit_x'.*vit_h, vit_l, vit_b"):
        build_sam("vit_x")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        build_sam("vit_tiny", checkpoint=tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "photo.pth"
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely a jpeg")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        build_sam("vit_tiny", checkpoint=path)


def test_not_a_state_dict(tmp_path):
    path = save(tmp_path, [1, 2, 3])
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        build_sam("vit_tiny", checkpoint=path)


def test_other_size_names_the_model_it_looks_like(tmp_path, tiny_state_dict):
    path = save(tmp_path, tiny_state_dict)
    with pytest.raises(CheckpointError, match=r"not vit_small .*it looks like vit_tiny"):
        build_sam("vit_small", checkpoint=path)


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_state_dict):
    broken = dict(tiny_state_dict)
    del broken["mask_decoder.iou_token.weight"]
    broken["extra.head.weight"] = torch.zeros(2)
    with pytest.raises(
        CheckpointError,
        match=r"1 missing keys \(mask_decoder.iou_token.weight\).*"
        r"1 unexpected keys \(extra.head.weight\)",
    ):
        build_sam("vit_tiny", checkpoint=save(tmp_path, broken))


def test_wrong_shape(tmp_path, tiny_state_dict):
    broken = dict(tiny_state_dict)
    broken["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    with pytest.raises(CheckpointError, match="another shape"):
        build_sam("vit_tiny", checkpoint=save(tmp_path, broken))


def test_wrapped_state_dict_loads(tmp_path, tiny_state_dict):
    model = build_sam("vit_tiny", checkpoint=save(tmp_path, {"model": tiny_state_dict}))
    assert torch.equal(
        model.state_dict()["mask_decoder.mask_tokens.weight"],
        tiny_state_dict["mask_decoder.mask_tokens.weight"],
    )


def test_registry_builds_every_size_cheaply():
    assert {"vit_h", "vit_l", "vit_b"} <= set(known_models())
    widths = {
        name: build_sam_from_spec(spec).image_encoder.patch_embed.proj.out_channels
        for name, spec in MODEL_REGISTRY.items()
        if name != "vit_h"
    }
    assert widths["vit_b"] == 768 and widths["vit_l"] == 1024


def test_download_from_local_url_goes_to_cache_with_progress(
    tmp_path, monkeypatch, tiny_state_dict
):
    """A file:// URL exercises the download path (temporary name, rename, cache hit)."""
    source = save(tmp_path, tiny_state_dict, "sam_tiny.pth")
    monkeypatch.setenv("SAENGINE_CACHE", str(tmp_path / "cache"))
    target = download(source.as_uri())
    assert target == tmp_path / "cache" / "checkpoints" / "sam_tiny.pth"
    assert sha256_of(target) == sha256_of(source)
    assert not list(target.parent.glob("*.part"))
    assert download(source.as_uri()) == target


def test_corrupt_official_download_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / OFFICIAL_CHECKPOINTS["vit_b"].filename
    fake.write_bytes(b"not the real weights")
    monkeypatch.setenv("SAENGINE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="corrupt: sha256"):
        download(fake.as_uri())
    assert not any((tmp_path / "cache" / "checkpoints").iterdir())


def test_official_urls_are_known():
    for name, known in OFFICIAL_CHECKPOINTS.items():
        assert known.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/sam_" + name)
        assert len(known.sha256) == 64
