"""`saengine export <dataset> format=coco|yolo-seg|cvat|labelstudio output=<dir>`: any SA-1B
dataset in another tool's format, streamed.

The dataset is a saengine output (generation job, campaign export, synthetic scenes: its
committed shards, read in order) or SA-1B data from elsewhere, without a manifest: a
folder of `sa_*.tar` shards, one tar, or `sa_*.jpg` + `sa_*.json` files, found by the
dataset index (`engine.dataset.reader.build_index`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from engine.config import plain
from engine.dataset.formats import get_format
from engine.dataset.formats.export import export_samples
from engine.dataset.formats.records import ExportOptions
from engine.dataset.layout import STATUS_OK, committed_shards, read_manifest
from engine.dataset.reader import DatasetError, build_index, iter_records
from engine.errors import UsageError, first_line
from engine.storage import Storage

Sample = tuple[str, bytes, bytes]


def run_export(cfg: DictConfig) -> None:
    """Export the dataset `cfg.dataset` to `cfg.output` in `cfg.format`; prints a summary."""
    try:
        entry = get_format(str(cfg.format))
        options = ExportOptions(
            category=str(cfg.category),
            polygons=bool(cfg.polygons),
            polygon_tolerance=float(cfg.polygon_tolerance),
            labelstudio_target=str(cfg.labelstudio.target),
            labelstudio_image_url=str(cfg.labelstudio.image_url),
        )
    except ValueError as error:
        raise UsageError(first_line(error)) from error
    output = _output_folder(str(cfg.output), force=bool(cfg.force))
    total, samples = open_dataset(str(cfg.dataset), plain(cfg.storage_options) or {})
    if cfg.max_images is not None:
        total = min(total, int(cfg.max_images))
        samples = _first(samples, total)
    try:
        report = export_samples(
            samples,
            output=output,
            format=entry,
            options=options,
            num_images=total,
            copy_images=bool(cfg.images),
            progress=bool(cfg.progress),
        )
    except ValueError as error:
        raise UsageError(f"{cfg.dataset}: {first_line(error)}") from error
    line = f"{report.images} images, {report.masks} masks -> {output} ({entry.name})"
    if report.fidelity is not None:
        fidelity = report.fidelity.summary()
        line += f"; polygon IoU mean {fidelity['mean_iou']:.4f}, min {fidelity['min_iou']}"
    print(line)


def open_dataset(path: str, storage_options: dict[str, object]) -> tuple[int, Iterator[Sample]]:
    """(number of images, their samples in order) of an SA-1B dataset; a UsageError in one
    line when `path` holds none."""
    storage = Storage(path, storage_options)
    if committed_shards(storage):
        manifest = read_manifest(storage).to_pydict()
        return sum(s == STATUS_OK for s in manifest["status"]), iter_records(storage)
    try:
        entries = build_index([path])
    except (DatasetError, OSError) as error:
        raise UsageError(f"not an SA-1B dataset: {first_line(error)}") from error
    samples = ((e.key, e.image.read_bytes(), e.annotations.read_bytes()) for e in entries)
    return len(entries), samples


def _output_folder(output: str, *, force: bool) -> Path:
    if "://" in output:
        raise UsageError(f"output must be a local folder (the tools read files), got {output}")
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"output {output} is a file, not a folder")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise UsageError(f"output {output} is not empty (force=true writes into it)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _first(samples: Iterator[Sample], count: int) -> Iterator[Sample]:
    for number, sample in enumerate(samples):
        if number >= count:
            return
        yield sample
