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

from engine.campaigns.campaign import Campaign
from engine.campaigns.masks import ACCEPTED, KEPT, MANUAL, PREFILLED, PROPOSED, REJECTED

STATS_PLOT = "stats.png"


def campaign_stats(campaign: Campaign) -> dict[str, Any]:
    with campaign.db.read() as db:
        versions = db.execute(
            "SELECT version, sha256, round, created FROM models ORDER BY version"
        ).fetchall()
        masks = db.execute(
            "SELECT m.image_id, m.origin, m.state, m.clicks, m.brush_strokes, m.seconds, "
            "m.model_sha256, a.name FROM masks m LEFT JOIN annotators a "
            "ON a.annotator_id = m.annotator_id"
        ).fetchall()
        skips = db.execute(
            "SELECT e.created, a.name FROM events e LEFT JOIN annotators a "
            "ON a.annotator_id = e.annotator_id WHERE e.kind = 'skip_object'"
        ).fetchall()
        finished = db.execute(
            "SELECT image_id, finished_at, stage FROM images WHERE status = 'done'"
        ).fetchall()
        counts = dict(db.execute("SELECT status, COUNT(*) FROM images GROUP BY status").fetchall())
    by_sha = {row["sha256"]: row["version"] for row in versions}
    starts = [row["created"] for row in versions]

    def version_at(time: float) -> int:
        return versions[max(0, bisect_right(starts, time) - 1)]["version"] if versions else 0

    image_version = {row["image_id"]: version_at(row["finished_at"]) for row in finished}
    rounds = {
        row["version"]: _figures(
            [m for m in masks if by_sha.get(m["model_sha256"]) == row["version"]],
            sum(version_at(s["created"]) == row["version"] for s in skips),
            [m for m in masks if image_version.get(m["image_id"]) == row["version"]],
            sum(v == row["version"] for v in image_version.values()),
        )
        for row in versions
    }
    for row in versions:
        rounds[row["version"]]["round"] = row["round"] or "initial"
    names = sorted(
        {m["name"] for m in masks if m["name"]} | {s["name"] for s in skips if s["name"]}
    )
    annotators = {
        name: _figures(
            [m for m in masks if m["name"] == name],
            sum(s["name"] == name for s in skips),
            [m for m in masks if m["name"] == name and m["image_id"] in image_version],
            len(
                {
                    m["image_id"]
                    for m in masks
                    if m["name"] == name and m["image_id"] in image_version
                }
            ),
        )
        for name in names
    }
    stages = {
        stage: _figures(
            [m for m in masks if m["image_id"] in ids],
            0,
            [m for m in masks if m["image_id"] in ids],
            len(ids),
        )
        for stage in sorted({row["stage"] for row in finished})
        for ids in [{row["image_id"] for row in finished if row["stage"] == stage}]
    }
    for row in stages.values():
        del row["skipped_objects"], row["skipped_share"]
    return {
        "images": counts,
        "rounds": rounds,
        "annotators": annotators,
        "stages": stages,
        "detector": _detector(campaign),
    }


def _detector(campaign: Campaign) -> dict[str, Any] | None:
    """The campaign's detector: its file and held-out metrics (None without one)."""
    from engine.campaigns.prefill import campaign_detector
    from engine.detection.registry import resolve_detector_reference
    from stages.semi import DetectorFileError, load_detector

    reference = campaign_detector(campaign)
    if reference is None:
        return None
    try:
        path = resolve_detector_reference(reference)
        _, metadata = load_detector(path)
    except (DetectorFileError, OSError, ValueError) as error:
        return {"file": reference, "error": str(error).splitlines()[0]}
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
    manual = [m for m in made if m["origin"] == MANUAL and m["state"] == ACCEPTED]
    added = [m for m in on_finished if m["origin"] == MANUAL and m["state"] == ACCEPTED]
    current = [
        m
        for m in on_finished
        if (m["origin"] == MANUAL and m["state"] == ACCEPTED) or m["state"] in (KEPT, PROPOSED)
    ]
    prefilled = [m for m in on_finished if m["origin"] == PREFILLED]
    kept = [m for m in prefilled if m["state"] in (KEPT, PROPOSED)]
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
        "prefilled_rejected": sum(m["state"] == REJECTED for m in prefilled),
    }


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
    name = {1: "stage 1 (manual)", 2: "stage 2 (semi)"}.get(int(stage), f"stage {stage}")
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
