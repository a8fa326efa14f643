"""What a generation job shows while it runs and when it ends: the progress bar, a line
per committed shard, the run's timings and the closing summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from engine.dataset import STATUS_OK, ManifestRow, shard_name
from engine.dataset.writer import ShardInfo
from engine.generation.pipeline import Pipeline, PipelineResult
from engine.storage import Storage


def run_with_progress(
    make_pipeline: Callable[..., Pipeline], *, total: int, done: int, progress: bool
) -> PipelineResult:
    """Run the pipeline that `make_pipeline(on_rows=..., on_shard=...)` builds, with a
    progress bar over all `total` images (`done` of them from earlier runs). Without a
    terminal (logs of `ray job submit`, KubeRay) the bar is redrawn at most every 10 s."""
    masks = [0]
    failed = [0]
    bar = tqdm(
        total=total,
        initial=done,
        unit="img",
        desc="generate",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 10.0,
    )
    start = time.perf_counter()

    def on_rows(rows: list[ManifestRow]) -> None:
        masks[0] += sum(row.num_masks for row in rows)
        failed[0] += sum(row.status != STATUS_OK for row in rows)
        rate = masks[0] / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix_str(f"{rate:.1f} masks/s, {failed[0]} failed", refresh=False)
        bar.update(len(rows))

    def on_shard(info: ShardInfo) -> None:
        bar.write(
            f"committed {shard_name(info.shard)}.tar: {info.num_ok} images, {info.num_masks} masks"
        )

    with bar:
        return make_pipeline(on_rows=on_rows, on_shard=on_shard).run()


def worker_report(result: PipelineResult) -> dict[str, Any]:
    fractions = [stats["busy_fraction"] for stats in result.worker_stats if stats["images"]]
    return {
        "pipeline_seconds": result.seconds,
        "model_workers": result.worker_stats,
        "model_busy_fraction": sum(fractions) / len(fractions) if fractions else 0.0,
    }


def print_summary(
    summary: dict[str, Any], run: dict[str, Any], storage: Storage, skipped: int
) -> None:
    lines = [
        f"dataset: {storage.url()}",
        f"images: {summary['images_ok']} ok, {summary['images_failed']} failed"
        + (f" ({skipped} from earlier runs)" if skipped else ""),
        f"masks: {summary['masks']} ({summary['masks_per_image']} per image)",
        f"time: {run['seconds']:.1f} s; model workers busy "
        f"{100 * run['model_busy_fraction']:.0f}% of the time",
        f"look at it: saengine inspect {storage.url()}",
    ]
    print("\n".join(lines), file=sys.stdout, flush=True)
