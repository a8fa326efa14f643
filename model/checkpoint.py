"""Checkpoint files: official download URLs, cache, verification, loading with clear errors."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class OfficialCheckpoint:
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    "vit_h": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "vit_l": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_b": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
}

_ENCODER_WIDTH_KEY = "image_encoder.patch_embed.proj.weight"
_BLOCK_KEY = re.compile(r"^image_encoder\.blocks\.(\d+)\.norm1\.weight$")


class _SpecLike(Protocol):
    @property
    def embed_dim(self) -> int: ...

    @property
    def depth(self) -> int: ...


def cache_dir() -> Path:
    """Where downloaded checkpoints live: $SAENGINE_CACHE or ~/.cache/saengine."""
    root = os.environ.get("SAENGINE_CACHE") or Path.home() / ".cache" / "saengine"
    return Path(root) / "checkpoints"


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to `path` through a temporary name (flushed, fsynced, renamed), so a
    reader or a resumed run never sees half a checkpoint."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial")
    with open(temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def load_tagged(
    path: str | Path, *, file_format: str, error: type[Exception], what: str, device: Any = "cpu"
) -> dict[str, Any]:
    """A dict saved with {"format": file_format, ...} (the engine's own model files: the
    stage-2 detector, the verifier), read with weights_only; `error` (one line naming the
    file and `what` it is not) for any other file. FileNotFoundError passes through."""
    try:
        payload = torch.load(Path(path), map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as failure:  # noqa: BLE001 - any unreadable file is the same user error
        raise error(f"{path} is not a {what} file ({failure})") from failure
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise error(f"{path} is not a {what} file (format {file_format})")
    return payload


def sha256_of(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _expected_sha256(url: str) -> str | None:
    for known in OFFICIAL_CHECKPOINTS.values():
        if known.url == url or known.filename == url.rsplit("/", 1)[-1]:
            return known.sha256
    return None


def download(url: str, destination: Path | None = None) -> Path:
    """Download `url` into the cache (once), with a progress bar; checks the SHA-256 of
    official files. Writes to a temporary name and renames only when complete."""
    target = destination or cache_dir() / url.rsplit("/", 1)[-1]
    expected = _expected_sha256(url)
    if target.exists() and (expected is None or sha256_of(target) == expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"could not download {url}: {err}") from None
    if expected is not None and (actual := sha256_of(partial)) != expected:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"download of {url} is corrupt: sha256 {actual}, expected {expected}")
    partial.replace(target)
    return target


def resolve_checkpoint(model_name: str, checkpoint: str | Path) -> Path:
    """A local path for `checkpoint`: a path, an http(s) URL, or "official"."""
    text = str(checkpoint)
    if text == "official":
        if model_name not in OFFICIAL_CHECKPOINTS:
            known = ", ".join(OFFICIAL_CHECKPOINTS)
            raise CheckpointError(f"model {model_name!r} has no official checkpoint (only {known})")
        return download(OFFICIAL_CHECKPOINTS[model_name].url)
    if text.startswith(("http://", "https://")):
        return download(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: a plain state_dict, or one under "model"/"state_dict"."""
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({reason[:120]})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise CheckpointError(f"{path} is not a SAM checkpoint (no state_dict of tensors inside)")
    return dict(loaded)


def describe_encoder(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    """(embed_dim, depth) of the image encoder in a state_dict, if it has one."""
    if _ENCODER_WIDTH_KEY not in state_dict:
        return None
    depth = sum(1 for key in state_dict if _BLOCK_KEY.match(key))
    return int(state_dict[_ENCODER_WIDTH_KEY].shape[0]), depth


def _check_size(
    path: Path,
    state_dict: Mapping[str, torch.Tensor],
    model_name: str,
    registry: Mapping[str, _SpecLike],
) -> None:
    found = describe_encoder(state_dict)
    wanted = registry[model_name]
    if found is None or found == (wanted.embed_dim, wanted.depth):
        return
    looks_like = [name for name, spec in registry.items() if (spec.embed_dim, spec.depth) == found]
    guess = f"it looks like {looks_like[0]}" if looks_like else "it matches no known model"
    raise CheckpointError(
        f"{path} holds an encoder of width {found[0]} and {found[1]} blocks, not {model_name} "
        f"(width {wanted.embed_dim}, {wanted.depth} blocks): {guess}"
    )


def _few(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_state_dict_into(
    model: nn.Module, path: Path, *, model_name: str, registry: Mapping[str, _SpecLike]
) -> None:
    """Load `path` into `model` strictly, with one-line errors for every way it can fail."""
    state_dict = read_state_dict(path)
    _check_size(path, state_dict, model_name, registry)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
        raise CheckpointError(f"{path} does not fit {model_name}: " + "; ".join(parts))
    wrong = [k for k, v in state_dict.items() if v.shape != expected[k].shape]
    if wrong:
        key = wrong[0]
        raise CheckpointError(
            f"{path} does not fit {model_name}: {len(wrong)} tensors of another shape "
            f"({key}: {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)})"
        )
    model.load_state_dict(state_dict)
