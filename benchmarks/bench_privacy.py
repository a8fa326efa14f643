"""What images.privacy=blur costs per image: decoding with privacy off (the baseline) and
with the face detector, the plate cascades and both, in one process, on photos with people
(matplotlib's Grace Hopper portrait; bus.jpg and zidane.jpg from SAENGINE_PEOPLE_PHOTOS if
set) and the bundled photos (no people).

    python -m benchmarks.bench_privacy [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks.common import machine
from engine.images import ImageOptions, decode_image
from engine.privacy import build_detector

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "images"


def photos() -> dict[str, bytes]:
    import matplotlib.cbook

    found = {
        "grace_hopper.jpg": Path(
            matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        ).read_bytes()
    }
    people = os.environ.get("SAENGINE_PEOPLE_PHOTOS")
    for name in ("bus.jpg", "zidane.jpg"):
        if people and (Path(people) / name).exists():
            found[name] = (Path(people) / name).read_bytes()
    for path in sorted(SAMPLES.glob("*.jpg")):
        found[path.name] = path.read_bytes()
    return found


def seconds(data: bytes, options: ImageOptions, repeats: int) -> tuple[float, int]:
    decode_image(data, options)  # warm: detectors built once per process
    start = time.perf_counter()
    for _ in range(repeats):
        regions = decode_image(data, options).blurred
    return (time.perf_counter() - start) / repeats, len(regions or [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    for name in ("faces", "plates"):
        build_detector(name)
    cases = {
        "off": ImageOptions(),
        "faces": ImageOptions(privacy="blur", privacy_detectors=("faces",)),
        "plates": ImageOptions(privacy="blur", privacy_detectors=("plates",)),
        "both": ImageOptions(privacy="blur"),
    }
    for name, data in photos().items():
        base, _ = seconds(data, cases["off"], args.repeats)
        cells = [f"decode {1000 * base:.0f} ms"]
        for label in ("faces", "plates", "both"):
            spent, regions = seconds(data, cases[label], args.repeats)
            cells.append(
                f"{label} +{1000 * (spent - base):.0f} ms ({regions} regions, x{spent / base:.1f})"
            )
        print(f"{name}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
