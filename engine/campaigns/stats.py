"""The paper's stage-1 (and stage-2) figures for a campaign, per model version (round) and
per annotator: masks per image, median time per mask, clicks per mask, share of skipped
objects; for stage-2 images also the share of prefilled masks kept and rejected. Per stage
(images annotated in stage 1 against stage 2): masks per image (prefilled kept + added),
added masks and clicks per image, share prefilled, prefilled rejected, time per added
mask; and the campaign's detector with its held-out AP and recall.

A mask belongs to the model version that assisted it; a finished image to the version that
was current when it was finished; a skipped object to the version current at that time.
"""

from __future__ import annotations

import statistics
from bisect import bisect_right
from pathlib import Path
from typing import Any

from engine.campaigns.campaign import Campaign, campaign_detector
from engine.campaigns.events import skipped_objects
from engine.campaigns.masks import mask_facts
from engine.campaigns.queue import finished_images, status_counts
from engine.campaigns.state import MaskOrigin, MaskState, Stage
from engine.campaigns.versions import versions as model_versions
from engine.errors import first_line

STATS_PLOT = "stats.png"


def campaign_stats(campaign: Campaign) -> dict[str, Any]:
    with campaign.db.read() as db:
        versions = model_versions(db)
        masks = mask_facts(db)
        skips = skipped_objects(db)
        finished = finished_images(db)
        counts = status_counts(db)
    starts = [row["created"] for row in versions]

    def version_at(time: float) -> int:
        return versions[max(0, bisect_right(starts, time) - 1)]["version"] if versions else 0

    image_version = {row["image_id"]: version_at(row["finished_at"]) for row in finished}
    skip_versions = [version_at(s["created"]) for s in skips]
    return {
        "images": counts,
        "rounds": _per_round(versions, masks, skip_versions, image_version),
        "annotators": _per_annotator(masks, skips, image_version),
        "stages": _per_stage(masks, finished),
        "detector": _detector(campaign),
    }


def _per_round(
    versions: list[Any], masks: list[Any], skip_versions: list[int], image_version: dict[int, int]
) -> dict[int, dict[str, Any]]:
    """Per model version (what belongs to a version: see the module docstring)."""
    by_sha = {row["sha256"]: row["version"] for row in versions}
    rounds = {}
    for row in versions:
        version = row["version"]
        rounds[version] = _figures(
            [m for m in masks if by_sha.get(m["model_sha256"]) == version],
            skip_versions.count(version),
            [m for m in masks if image_version.get(m["image_id"]) == version],
            sum(v == version for v in image_version.values()),
        )
        rounds[version]["round"] = row["round"] or "initial"
    return rounds


def _per_annotator(
    masks: list[Any], skips: list[Any], image_version: dict[int, int]
) -> dict[str, dict[str, Any]]:
    names = sorted(
        {m["name"] for m in masks if m["name"]} | {s["name"] for s in skips if s["name"]}
    )
    annotators = {}
    for name in names:
        theirs = [m for m in masks if m["name"] == name]
        on_finished = [m for m in theirs if m["image_id"] in image_version]
        annotators[name] = _figures(
            theirs,
            sum(s["name"] == name for s in skips),
            on_finished,
            len({m["image_id"] for m in on_finished}),
        )
    return annotators


def _per_stage(masks: list[Any], finished: list[Any]) -> dict[int, dict[str, Any]]:
    """The images finished in each stage and their masks (no skipped objects: those are
    not tied to an image's stage)."""
    stages = {}
    for stage in sorted({row["stage"] for row in finished}):
        ids = {row["image_id"] for row in finished if row["stage"] == stage}
        on_stage = [m for m in masks if m["image_id"] in ids]
        stages[stage] = _figures(on_stage, 0, on_stage, len(ids))
        del stages[stage]["skipped_objects"], stages[stage]["skipped_share"]
    return stages


def _detector(campaign: Campaign) -> dict[str, Any] | None:
    """The campaign's detector: its file and held-out metrics (None without one)."""
    from engine.detection.registry import resolve_detector_reference
    from stages.semi import DetectorFileError, load_detector

    reference = campaign_detector(campaign)
    if reference is None:
        return None
    try:
        path = resolve_detector_reference(reference)
        _, metadata = load_detector(path)
    except (DetectorFileError, OSError, ValueError) as error:
        return {"file": reference, "error": first_line(error)}
    metrics = metadata.metrics
    return {
        "file": path,
        "ap": metrics.get("ap"),
        "ap50": metrics.get("ap50"),
        "recall_50": metrics.get("recall_50"),
        "score_thresh": metadata.score_thresh,
        "target_precision": metadata.target_precision,
        "steps": metadata.steps,
    }


def _figures(
    made: list[Any], skipped: int, on_finished: list[Any], finished_images: int
) -> dict[str, Any]:
    """made: masks made with the version (or by the annotator); on_finished: the masks of
    the images finished under it."""
    manual = [m for m in made if _accepted(m)]
    added = [m for m in on_finished if _accepted(m)]
    current = [m for m in on_finished if _accepted(m) or m["state"] in KEPT_STATES]
    prefilled = [m for m in on_finished if m["origin"] == MaskOrigin.PREFILLED]
    kept = [m for m in prefilled if m["state"] in KEPT_STATES]
    return {
        "manual_masks": len(manual),
        "finished_images": finished_images,
        "masks_per_image": len(current) / finished_images if finished_images else None,
        "added_per_image": len(added) / finished_images if finished_images else None,
        "clicks_per_image": sum(m["clicks"] for m in added) / finished_images
        if finished_images
        else None,
        "median_seconds_per_mask": statistics.median(m["seconds"] for m in manual)
        if manual
        else None,
        "clicks_per_mask": statistics.fmean(m["clicks"] for m in manual) if manual else None,
        "brush_strokes_per_mask": statistics.fmean(m["brush_strokes"] for m in manual)
        if manual
        else None,
        "skipped_objects": skipped,
        "skipped_share": skipped / (skipped + len(manual)) if skipped + len(manual) else None,
        "prefilled_share": len(kept) / len(current) if current else None,
        "prefilled_kept": len(kept),
        "prefilled_rejected": sum(m["state"] == MaskState.REJECTED for m in prefilled),
    }


KEPT_STATES = (MaskState.KEPT, MaskState.PROPOSED)  # prefilled masks not rejected


def _accepted(mask: Any) -> bool:
    return bool(mask["origin"] == MaskOrigin.MANUAL and mask["state"] == MaskState.ACCEPTED)


def format_stats(stats: dict[str, Any]) -> str:
    columns = ("masks/img", "s/mask", "clicks", "skipped", "masks", "images")
    width = max([18, *(len(name) for name in stats["annotators"])])
    header = " ".join([" " * width, *(f"{name:>9}" for name in columns)])
    lines = [
        f"images: {dict(sorted(stats['images'].items()))}",
        "per model version (round):",
        header,
    ]
    for version, row in stats["rounds"].items():
        lines.append(_row(f"v{version} {row['round']}", row, width))
    lines += ["per annotator:", header]
    lines += [_row(name, row, width) for name, row in stats["annotators"].items()]
    if stats.get("stages"):
        wide = max(width, 24)
        lines += ["per stage (images finished):", _stage_header(wide)]
        lines += [_stage_row(stage, row, wide) for stage, row in stats["stages"].items()]
    detector = stats.get("detector")
    if detector:
        lines.append(f"detector: {detector['file']}")
        if "error" in detector:
            lines.append(f"  cannot read it: {detector['error']}")
        else:
            lines.append(
                "  held-out AP {} AP50 {} recall@0.5 {}, confident threshold {} "
                "(precision {})".format(
                    *(
                        "-" if detector[k] is None else f"{detector[k]:.3f}"
                        for k in ("ap", "ap50", "recall_50", "score_thresh", "target_precision")
                    )
                )
            )
    return "\n".join(lines)


STAGE_COLUMNS = ("masks/img", "added/img", "clicks/img", "prefilled", "rejected", "s/added")


def _stage_header(width: int) -> str:
    return " ".join([" " * width, *(f"{name:>10}" for name in STAGE_COLUMNS)])


def _show(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _stage_row(stage: int, row: dict[str, Any], width: int) -> str:
    show = _show
    cells = [
        show(row["masks_per_image"], ".1f"),
        show(row["added_per_image"], ".1f"),
        show(row["clicks_per_image"], ".1f"),
        show(row["prefilled_share"], ".2f"),
        str(row["prefilled_rejected"]),
        show(row["median_seconds_per_mask"], ".1f"),
    ]
    known = int(stage) in tuple(Stage)
    name = f"stage {stage} ({Stage(stage).config_name})" if known else f"stage {stage}"
    label = f"{name} {row['finished_images']} img"
    return " ".join([label.ljust(width), *(f"{cell:>10}" for cell in cells)])


def _row(label: str, row: dict[str, Any], width: int) -> str:
    show = _show
    cells = [
        show(row["masks_per_image"], ".1f"),
        show(row["median_seconds_per_mask"], ".1f"),
        show(row["clicks_per_mask"], ".2f"),
        show(row["skipped_share"], ".2f"),
        str(row["manual_masks"]),
        str(row["finished_images"]),
    ]
    return " ".join([label.ljust(width), *(f"{cell:>9}" for cell in cells)])


def plot_stats(stats: dict[str, Any], path: Path) -> Path:
    """One panel per figure, across model versions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = list(stats["rounds"])
    panels = [
        ("masks_per_image", "masks per image"),
        ("median_seconds_per_mask", "median s per mask"),
        ("clicks_per_mask", "clicks per mask"),
        ("skipped_share", "skipped objects"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 3))
    for axis, (key, title) in zip(axes, panels):
        values = [stats["rounds"][v][key] for v in versions]
        points = [(v, y) for v, y in zip(versions, values) if y is not None]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        axis.set(title=title, xlabel="model version (round)")
        axis.set_xticks(versions)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
