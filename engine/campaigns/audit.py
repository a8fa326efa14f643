"""`saengine audit report`: a dataset's mask quality as the paper's section 5 measured it.

Every proposed mask of the audited (finished) images is paired with its reviewed version:
itself when kept (IoU 1), the reviewer's correction when corrected, none when rejected (a
rejected mask counts as IoU 0: no corrected version matches it). Reported, each share with
its 95% Wilson score interval: the masks whose pair has IoU > 0.9 and > 0.75 (the paper: 94%
and 97%), the shares kept, corrected and rejected, the same over the pairs only (rejected
masks left out: the paper's pairs), the masks added per image (what the generator missed),
the seconds per answer and masks reviewed (and corrected) per minute; and all of it per bin
of predicted IoU and of stability score, with the shares of the masks at or above each bin's
lower edge, so a generator's thresholds can be chosen from evidence.

Written beside the campaign: audit_report.json, audit_report.png and
audit_corrections.jsonl (one line per audited mask: its proposed and reviewed RLE, verdict,
scores and dataset annotation id), from which anyone can recompute the IoUs.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils
from scipy.stats import binomtest

from engine.campaigns.campaign import Campaign
from engine.campaigns.queue import status_counts
from engine.campaigns.review import added_masks, reviewed_masks
from engine.campaigns.state import ImageStatus, MaskState, Verdict
from engine.files import write_atomic

THRESHOLDS = (0.9, 0.75)
REPORT_FILE = "audit_report.json"
PLOT_FILE = "audit_report.png"
CORRECTIONS_FILE = "audit_corrections.jsonl"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class AuditedMask:
    """One proposed mask and its reviewed version (rle dicts: {"size": [h, w], "counts"}):
    verdict keep, correct or reject; iou of the two (0 when rejected); seconds: the answer's
    (None when the mask was kept by finishing its image)."""

    mask_id: int
    image_id: int
    key: str
    source: str
    annotation_id: int | None
    predicted_iou: float | None
    stability_score: float | None
    verdict: str
    iou: float
    seconds: float | None
    proposed: dict[str, Any]
    reviewed: dict[str, Any] | None


def audited_masks(campaign: Campaign) -> list[AuditedMask]:
    """The proposed masks of the finished images with their reviewed versions. A corrected
    mask whose correction was deleted afterwards counts as rejected."""
    with campaign.db.read() as db:
        rows = reviewed_masks(db)
    return [mask for mask in map(_audited, rows) if mask is not None]


def _audited(row: Any) -> AuditedMask | None:
    size = [row["height"], row["width"]]
    proposed = {"size": size, "counts": row["counts"]}
    reviewed: dict[str, Any] | None = None
    verdict = Verdict.REJECT
    if row["state"] == MaskState.KEPT:
        verdict, reviewed = Verdict.KEEP, proposed
    elif row["state"] == MaskState.CORRECTED and row["corrected_counts"] is not None:
        verdict, reviewed = Verdict.CORRECT, {"size": size, "counts": row["corrected_counts"]}
    elif row["state"] not in (MaskState.REJECTED, MaskState.CORRECTED):
        return None  # not reviewed
    return AuditedMask(
        mask_id=row["mask_id"],
        image_id=row["image_id"],
        key=row["key"],
        source=row["source"],
        annotation_id=row["annotation_id"],
        predicted_iou=row["predicted_iou"],
        stability_score=row["stability_score"],
        verdict=str(verdict),
        iou=rle_iou(proposed, reviewed) if reviewed is not None else 0.0,
        seconds=row["review_seconds"],
        proposed=proposed,
        reviewed=reviewed,
    )


def rle_iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    """IoU of two COCO compressed RLEs of the same size (pycocotools)."""
    if a["counts"] == b["counts"]:
        return 1.0
    encoded = [{"size": r["size"], "counts": r["counts"].encode()} for r in (a, b)]
    return float(mask_utils.iou(encoded[:1], encoded[1:], [0])[0][0])


def proportion(hits: int, total: int) -> tuple[float | None, list[float] | None]:
    """hits / total and its 95% Wilson score interval [low, high] (None, None when total is
    0)."""
    if total == 0:
        return None, None
    interval = binomtest(hits, total).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return hits / total, [float(interval.low), float(interval.high)]


def shares(masks: list[AuditedMask]) -> dict[str, Any]:
    """masks, and per threshold t the share with IoU > t (key iou_gt_0_9, ...) with its
    interval (iou_gt_0_9_ci); the shares kept, corrected and rejected."""
    figures: dict[str, Any] = {"masks": len(masks)}
    for threshold in THRESHOLDS:
        name = threshold_name(threshold)
        hits = sum(mask.iou > threshold for mask in masks)
        figures[name], figures[f"{name}_ci"] = proportion(hits, len(masks))
    for verdict, name in ((Verdict.KEEP, "kept"), (Verdict.CORRECT, "corrected")):
        figures[name] = proportion(sum(m.verdict == verdict for m in masks), len(masks))[0]
    rejected = sum(m.verdict == Verdict.REJECT for m in masks)
    figures["rejected"], figures["rejected_ci"] = proportion(rejected, len(masks))
    return figures


def threshold_name(threshold: float) -> str:
    return "iou_gt_" + f"{threshold:g}".replace(".", "_")


def audit_report(
    campaign: Campaign, *, predicted_iou_bins: list[float], stability_bins: list[float]
) -> dict[str, Any]:
    """The audit's figures (see the module docstring) as one JSON-able dict."""
    masks = audited_masks(campaign)
    with campaign.db.read() as db:
        added = added_masks(db)
        images = status_counts(db).get(str(ImageStatus.DONE), 0)
    pairs = [mask for mask in masks if mask.verdict != Verdict.REJECT]
    return {
        "images": images,
        **shares(masks),
        "pairs": {key: value for key, value in shares(pairs).items() if "reject" not in key},
        "added": len(added),
        "added_per_image": len(added) / images if images else None,
        "timing": timing(masks, [row["seconds"] for row in added]),
        "by_predicted_iou": binned(masks, "predicted_iou", predicted_iou_bins),
        "by_stability_score": binned(masks, "stability_score", stability_bins),
    }


def timing(masks: list[AuditedMask], added_seconds: list[float]) -> dict[str, Any]:
    """Median seconds per answer by verdict, masks reviewed per minute (every answer) and
    corrected per minute (corrections only), masks added per minute; the answers' own
    seconds (the page's clock, or the scripted reviewers' simulated one)."""
    timed = [mask for mask in masks if mask.seconds is not None]
    by_verdict = {
        str(v): [m.seconds for m in timed if m.verdict == v and m.seconds is not None]
        for v in Verdict
    }
    return {
        "answers": len(timed),
        "median_seconds": {v: statistics.median(s) if s else None for v, s in by_verdict.items()},
        "reviewed_per_minute": per_minute([m.seconds for m in timed if m.seconds is not None]),
        "corrected_per_minute": per_minute(by_verdict[str(Verdict.CORRECT)]),
        "added_per_minute": per_minute(added_seconds),
    }


def per_minute(seconds: list[float]) -> float | None:
    total = sum(seconds)
    return 60.0 * len(seconds) / total if total > 0 else None


def binned(masks: list[AuditedMask], score: str, edges: list[float]) -> dict[str, Any]:
    """The shares per bin [edges[i], edges[i + 1]) of a score (the last bin closed), of the
    masks without the score ("unknown"), and of the masks at or above each lower edge."""
    if sorted(edges) != list(edges) or len(edges) < 2:
        raise ValueError(f"bins of {score} must be at least two increasing edges, got {edges}")
    values = [(getattr(mask, score), mask) for mask in masks]
    bins = []
    for index, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        last = index == len(edges) - 2
        inside = [m for v, m in values if v is not None and low <= v and (v < high or last)]
        bins.append({"range": [low, high], **shares(inside)})
    unknown = [m for v, m in values if v is None]
    at_least = [
        {"threshold": low, **shares([m for v, m in values if v is not None and v >= low])}
        for low in edges[:-1]
    ]
    return {"bins": bins, "unknown": shares(unknown), "at_least": at_least}


def write_report(campaign: Campaign, report: dict[str, Any], plot: Path | None = None) -> Path:
    """audit_report.json, audit_corrections.jsonl and the plot beside the campaign (the
    plot at `plot` if given); returns the plot's path."""
    write_atomic(campaign.dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    lines = [json.dumps(asdict(mask)) for mask in audited_masks(campaign)]
    write_atomic(campaign.dir / CORRECTIONS_FILE, "".join(line + "\n" for line in lines))
    return plot_report(report, plot or campaign.dir / PLOT_FILE)


def format_report(report: dict[str, Any]) -> str:
    """The report as text: the headline shares, then a table per score."""
    lines = [
        f"audited {report['masks']} masks on {report['images']} images",
        f"  IoU > 0.9 : {_share(report, 'iou_gt_0_9')}   (paper: 94%)",
        f"  IoU > 0.75: {_share(report, 'iou_gt_0_75')}   (paper: 97%)",
        f"  kept {_pct(report['kept'])}, corrected {_pct(report['corrected'])}, "
        f"rejected {_share(report, 'rejected')}",
        f"  pairs (rejected left out): IoU > 0.9 {_share(report['pairs'], 'iou_gt_0_9')}",
        f"  added {report['added']} masks, {_num(report['added_per_image'])} per image",
    ]
    timing = report["timing"]
    lines.append(
        f"  reviewed {_num(timing['reviewed_per_minute'])} masks/min, corrected "
        f"{_num(timing['corrected_per_minute'])} masks/min ({timing['answers']} timed answers)"
    )
    for score in ("predicted_iou", "stability_score"):
        lines += [
            "",
            f"by {score}:",
            f"  {'bin':<13}  masks  {'IoU>0.9':>12}  {'IoU>0.75':>12}  rejected",
        ]
        for row in report[f"by_{score}"]["bins"]:
            low, high = row["range"]
            lines.append(
                f"  [{low:.2f}, {high:.2f}]  {row['masks']:>6}  {_pct(row['iou_gt_0_9']):>12}"
                f"  {_pct(row['iou_gt_0_75']):>12}  {_pct(row['rejected']):>8}"
            )
    return "\n".join(lines)


def _share(figures: dict[str, Any], name: str) -> str:
    value, interval = figures[name], figures.get(f"{name}_ci")
    if value is None or interval is None:
        return "n/a"
    return f"{100 * value:.1f}% [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Per predicted-IoU bin and per stability bin: the shares with IoU > 0.9 and > 0.75
    with their intervals, and the share rejected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, score in zip(axes, ("predicted_iou", "stability_score")):
        rows = report[f"by_{score}"]["bins"]
        labels = [f"{r['range'][0]:.2f}-{r['range'][1]:.2f}\n({r['masks']})" for r in rows]
        for offset, name in ((-0.2, "iou_gt_0_9"), (0.2, "iou_gt_0_75")):
            _bars(axis, rows, name, offset)
        axis.plot(range(len(rows)), [r["rejected"] or 0 for r in rows], "k.--", label="rejected")
        axis.set_xticks(range(len(rows)), labels, fontsize=7)
        axis.set_title(f"by {score} (masks)")
        axis.set_ylim(0, 1.05)
    axes[0].set_ylabel("share of masks (95% CI)")
    axes[0].legend(fontsize=8)
    figure.suptitle(
        f"audit of {report['masks']} masks: IoU > 0.9 {_pct(report['iou_gt_0_9'])}, "
        f"> 0.75 {_pct(report['iou_gt_0_75'])}"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _bars(axis: Any, rows: list[dict[str, Any]], name: str, offset: float) -> None:
    values = [row[name] or 0.0 for row in rows]
    errors = [
        [v - (r[f"{name}_ci"] or [v, v])[0] for v, r in zip(values, rows)],
        [(r[f"{name}_ci"] or [v, v])[1] - v for v, r in zip(values, rows)],
    ]
    positions = [i + offset for i in range(len(rows))]
    label = name.replace("iou_gt_", "IoU > ").replace("_", ".")
    axis.bar(positions, values, width=0.4, yerr=errors, capsize=2, label=label)
