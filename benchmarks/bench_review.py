"""The audit and the verification queue on a generation job's output, with scripted
reviewers who know the truth (synthetic scenes):

1. `saengine synth` scenes, then `saengine generate` over them with the bundled model (the
   automatic stage's real output: the masks audited and verified);
2. an audit of a sample of its images (`saengine audit create / simulate / report`): the
   shares with IoU > 0.9 and > 0.75 against the same shares computed directly from the
   generated masks and the true ones (no campaign involved);
3. a verification queue over every image (`saengine verify create / simulate`): people
   answer the first images, `saengine verify round` trains the verifier and lets it accept
   what it is sure of on the rest, people answer what is left; masks verified per minute
   against masks corrected per minute in the audit (the scripted reviewers' clock), the
   verifier's precision and recall on held-out answers and the human answers it saved.

    python -m benchmarks.bench_review [--images 48] [--audit 24] [--first 32]
        [--accept-iou 0.75] [--target-precision 0.9] [--threads N] [--workdir outputs/bench-review]

The small bundled model's masks are weak (few reach IoU 0.9 with the truth), so the
verifiers accept masks at IoU >= --accept-iou (0.75 by default here; 0.9 in ReviewPolicy).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from benchmarks.common import machine
from engine.campaigns.campaign import Campaign
from engine.campaigns.serve import saengine_command
from engine.campaigns.server_process import start_server
from engine.campaigns.truth import TruthIndex
from engine.campaigns.verify import ensure_embeddings
from engine.cli import main as saengine_main
from engine.dataset import read_manifest
from engine.dataset.reader import build_index
from engine.storage import Storage
from stages.automatic.rle import coco_decode


def saengine(*args: str) -> str:
    """`saengine ...` in this process; its standard output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        saengine_main(list(args))
    return out.getvalue()


def generate(scenes: Path, output: Path) -> None:
    """The generation job in a child process (it runs its own Ray)."""
    args = ["generate", f"input={scenes}", f"output={output}", "model=bundled"]
    subprocess.run([*saengine_command(), *args, "generator=demo", "progress=false"], check=True)


@contextlib.contextmanager
def serving(folder: Path) -> Any:
    """The campaign's server without an embed job (embeddings computed here first)."""
    campaign = Campaign(folder)
    with campaign.db.read() as db:
        ids = [row[0] for row in db.execute("SELECT image_id FROM images")]
    ensure_embeddings(campaign, ids, progress=True)
    server, url = start_server(campaign, "embed=false", "rounds=false")
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def truth_shares(audit: Path, generated: Path, scenes: Path) -> dict[str, float]:
    """The audited masks' best IoU with a true object, from the datasets alone."""
    truth = {}
    for entry in build_index([str(scenes)]):
        record = json.loads(entry.annotations.read_bytes())
        truth[entry.image.source] = [coco_decode(a["segmentation"]) for a in record["annotations"]]
    origin = {r["key"]: r["source"] for r in read_manifest(Storage(str(generated))).to_pylist()}
    best = []
    for line in (audit / "audit_corrections.jsonl").open():
        mask = json.loads(line)
        rle = {"size": mask["proposed"]["size"], "counts": mask["proposed"]["counts"].encode()}
        proposed = mask_utils.decode(rle).astype(bool)
        key = mask["source"].rpartition("#")[2].removesuffix(".jpg")
        ious = [(proposed & t).sum() / (proposed | t).sum() for t in truth[origin[key]]]
        best.append(max(ious))
    values = np.array(best)
    return {"masks": len(values), "iou_gt_0_9": float((values > 0.9).mean()),
            "iou_gt_0_75": float((values > 0.75).mean())}  # fmt: skip


def verifier_truth_precision(folder: Path, scenes: Path, accept_iou: float) -> dict[str, Any]:
    """The masks the verifier accepted without a person, checked against the truth: the
    share at least `accept_iou` close to a true object (what the scripted people accept)."""
    truth = TruthIndex([str(scenes)])
    campaign = Campaign(folder)
    with campaign.db.read() as db:
        rows = db.execute(
            "SELECT m.counts, m.height, m.width, i.source FROM reviews r JOIN masks m ON "
            "m.mask_id = r.mask_id JOIN images i ON i.image_id = m.image_id "
            "WHERE r.annotator_id IS NULL"
        ).fetchall()
    good = []
    for row in rows:
        size = (row["height"], row["width"])
        rle = {"size": list(size), "counts": row["counts"].encode()}
        proposed = mask_utils.decode(rle).astype(bool)
        targets = truth.masks(row["source"], size)
        ious = [(proposed & t).sum() / (proposed | t).sum() for t in targets]
        good.append(max(ious, default=0.0) >= accept_iou)
    return {
        "accepted": len(good),
        "precision_against_truth": float(np.mean(good)) if good else None,
    }


def run_audit(args: argparse.Namespace, work: Path, generated: Path, scenes: Path) -> dict:
    folder = work / "audit"
    saengine("audit", "create", str(generated), f"output={folder}", f"sample={args.audit}",
             "model=bundled", "progress=false")  # fmt: skip
    started = time.perf_counter()
    with serving(folder) as url:
        saengine("audit", "simulate", str(folder), f"truth={scenes}", f"server={url}",
                 "annotators=2", f"reviewer.accept_iou={args.accept_iou}")  # fmt: skip
    seconds = time.perf_counter() - started
    report = json.loads(saengine("audit", "report", str(folder), "json=true"))
    return {"report": report, "truth": truth_shares(folder, generated, scenes), "wall_s": seconds}


def run_verify(args: argparse.Namespace, work: Path, generated: Path, scenes: Path) -> dict:
    folder = work / "verify"
    saengine("verify", "create", str(generated), f"output={folder}", "sample=null",
             "model=bundled", "progress=false")  # fmt: skip
    simulate = ("verify", "simulate", str(folder), f"truth={scenes}", "annotators=2",
                f"reviewer.accept_iou={args.accept_iou}")  # fmt: skip
    with serving(folder) as url:
        saengine(*simulate, f"server={url}", f"max_images={args.first}")
        rounded = saengine(
            "verify", "round", str(folder), f"round.target_precision={args.target_precision}"
        )
        saengine(*simulate, f"server={url}")
    report = json.loads(saengine("verify", "report", str(folder), f"audit={work / 'audit'}",
                                 "json=true"))  # fmt: skip
    truth = verifier_truth_precision(folder, scenes, args.accept_iou)
    return {"report": report, "round": rounded.strip(), "verifier_vs_truth": truth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--audit", type=int, default=24)
    parser.add_argument("--first", type=int, default=32, help="images people verify first")
    parser.add_argument("--accept-iou", type=float, default=0.75)
    parser.add_argument("--target-precision", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads here")
    parser.add_argument("--workdir", default="outputs/bench-review")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    scenes, generated = work / "scenes", work / "generated"
    saengine("synth", f"output={scenes}", f"num_images={args.images}", "objects=[2,5]",
             "min_area=400", "part_probability=0")  # fmt: skip
    generate(scenes, generated)
    audit = run_audit(args, work, generated, scenes)
    verify = run_verify(args, work, generated, scenes)
    results = {"machine": machine(), "args": vars(args), "audit": audit, "verify": verify}
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(machine())
    print(summary(audit, verify))


def summary(audit: dict, verify: dict) -> str:
    report, truth = audit["report"], audit["truth"]

    def share(name: str) -> str:
        low, high = report[f"{name}_ci"]
        return f"{100 * report[name]:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"

    people, verifier = verify["report"]["people"], verify["report"]["verifier"]
    lines = [
        f"audit: {report['masks']} masks on {report['images']} images",
        f"  IoU > 0.9 : {share('iou_gt_0_9')}   truth: {100 * truth['iou_gt_0_9']:.1f}%",
        f"  IoU > 0.75: {share('iou_gt_0_75')}   truth: {100 * truth['iou_gt_0_75']:.1f}%",
        f"  rejected {share('rejected')}, added per image {report['added_per_image']:.2f}",
        f"  corrected {report['timing']['corrected_per_minute']:.2f} masks/min, reviewed "
        f"{report['timing']['reviewed_per_minute']:.2f} masks/min (scripted clock)",
        f"verify: people answered {people['answers']} masks, {people['verified_per_minute']:.1f} "
        f"masks/min ({verify['report']['verified_vs_corrected']:.1f}x correcting)",
        f"  {verify['round']}",
        f"  verifier accepted {verifier['answers']} masks without a person (human answers "
        f"saved), finished {verifier['images_finished']} images; against the truth "
        f"{verify['verifier_vs_truth']['precision_against_truth']} of them are right",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
