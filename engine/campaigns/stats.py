"""The paper's stage-1 (and stage-2) figures for a campaign, per model version (round) and
per annotator: masks per image, median time per mask, clicks per mask, share of skipped
objects; for stage-2 images also the share of prefilled masks kept and rejected.

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
            "SELECT image_id, finished_at FROM images WHERE status = 'done'"
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
    return {"images": counts, "rounds": rounds, "annotators": annotators}


def _figures(
    made: list[Any], skipped: int, on_finished: list[Any], finished_images: int
) -> dict[str, Any]:
    """made: masks made with the version (or by the annotator); on_finished: the masks of
    the images finished under it."""
    manual = [m for m in made if m["origin"] == MANUAL and m["state"] == ACCEPTED]
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
    return "\n".join(lines)


def _row(label: str, row: dict[str, Any], width: int) -> str:
    def show(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

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
