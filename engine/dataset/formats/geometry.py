"""Masks and polygons for the label formats: COCO RLE in and out, masks traced into polygons
that keep holes and several parts, polygons rasterized back, the IoU between the two.

A polygon is a K x 2 float array of XY vertices, x right and y down, in pixels (a ring, not
closed by repeating its first vertex). Two conventions, after the rasterizer that reads it:
- pixel corners (COCO, CVAT, Label Studio: pycocotools fills polygons): pixel (row i,
  column j) covers [j, j + 1] x [i, i + 1], and a mask's polygon runs along its pixels' edges;
- pixel centres (YOLO: its tools fill polygons with OpenCV's fillPoly, which fills the
  polygon's own edges too): a mask's polygon runs through its boundary pixels' centres.
Both fill by the even-odd rule, so a hole joined to its outer ring by a zero-width cut stays
a hole; under OpenCV a cut between two parts also fills the pixels it runs over.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy.spatial import cKDTree

CocoRle = dict[str, Any]  # {"size": [h, w], "counts": <COCO compressed string>}
UPSAMPLE = 2  # contours of the mask at twice its resolution, rounded, are its pixel edges


def decode(rle: CocoRle) -> np.ndarray:
    """A COCO RLE (compressed string or uncompressed counts) -> H x W uint8 {0, 1}."""
    return np.asarray(mask_utils.decode(native(rle)), dtype=np.uint8)


def encode(mask: np.ndarray) -> CocoRle:
    """H x W {0, 1} -> COCO compressed RLE with a str `counts`."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode()}


def to_rle(segmentation: Any, *, height: int, width: int) -> CocoRle:
    """A COCO `segmentation` (polygon list, uncompressed or compressed RLE) -> compressed RLE
    at height x width; a ValueError naming what is wrong otherwise."""
    if isinstance(segmentation, list):
        return polygons_to_rle(
            [np.asarray(p, dtype=float).reshape(-1, 2) for p in segmentation],
            height=height,
            width=width,
        )
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise ValueError(f"segmentation is neither polygons nor RLE: {str(segmentation)[:60]}")
    if [int(v) for v in segmentation.get("size", [])] != [height, width]:
        raise ValueError(f"RLE size {segmentation.get('size')} != image {[height, width]}")
    converted = native(segmentation)
    if sum(mask_utils.decode(converted).shape) != height + width:
        raise ValueError("RLE does not decode")
    return {"size": [height, width], "counts": converted["counts"].decode()}


def native(rle: CocoRle) -> dict[str, Any]:
    """An RLE as pycocotools takes it (compressed counts as bytes)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        return dict(
            mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        )
    return {
        "size": [height, width],
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }


def rasterize(
    polygons: list[np.ndarray], *, height: int, width: int, centres: bool = False
) -> CocoRle:
    """Polygons as their readers fill them: pixel corners by pycocotools, pixel centres by
    OpenCV's fillPoly (all rings at once, even-odd)."""
    if not centres:
        return polygons_to_rle(polygons, height=height, width=width)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(p).astype(np.int32) for p in polygons if len(p)], 1)
    return encode(mask)


def polygons_to_rle(polygons: list[np.ndarray], *, height: int, width: int) -> CocoRle:
    """Polygons in pixel corners (each K x 2 XY, K >= 3) rasterized by pycocotools and
    merged (union)."""
    rings = [p.reshape(-1).astype(float).tolist() for p in polygons if len(p) >= 3]
    if not rings:
        return encode(np.zeros((height, width), np.uint8))
    merged = mask_utils.merge(mask_utils.frPyObjects(rings, height, width))
    return {"size": [height, width], "counts": merged["counts"].decode()}


def rle_iou(first: CocoRle, second: CocoRle) -> float:
    """IoU of two RLEs of the same size (1.0 when both are empty)."""
    a, b = native(first), native(second)
    if mask_utils.area(a) == 0 and mask_utils.area(b) == 0:
        return 1.0
    return float(mask_utils.iou([a], [b], [0])[0, 0])


def mask_polygons(
    mask: np.ndarray, *, tolerance: float = 0.0, centres: bool = False
) -> list[np.ndarray]:
    """The polygons of a mask, one per 8-connected part, each hole joined to its part's
    outer ring by a zero-width cut: rasterized (`rasterize`, same `centres`), they give
    back the mask exactly when tolerance is 0. tolerance: Douglas-Peucker simplification
    of each ring, in pixels; centres: pixel-centre coordinates (else pixel corners)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    x0, y0 = int(xs.min()), int(ys.min())
    crop = np.ascontiguousarray(mask[y0 : ys.max() + 1, x0 : xs.max() + 1], dtype=np.uint8)
    scale = 1 if centres else UPSAMPLE
    scaled = np.kron(crop, np.ones((scale, scale), np.uint8))
    contours, hierarchy = cv2.findContours(scaled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    rings = [_ring(c, x0, y0, scale=scale, tolerance=tolerance) for c in contours]
    parents = hierarchy[0][:, 3]
    polygons = []
    for index in np.flatnonzero(parents < 0):
        holes = [rings[i] for i in np.flatnonzero(parents == index) if len(rings[i]) >= 3]
        if len(rings[index]) >= 3:
            polygons.append(join_rings([rings[index], *holes]))
    return polygons


def _ring(contour: np.ndarray, x0: int, y0: int, *, scale: int, tolerance: float) -> np.ndarray:
    """A contour (boundary pixel centres) of the crop, upsampled by `scale` -> a ring in the
    image: through the pixel centres (scale 1), or along the original pixels' edges
    (scale 2: the upsampled centres rounded are the corners), duplicate vertices dropped."""
    points = contour.reshape(-1, 2).astype(float)
    if scale > 1:
        points = np.round((points + 0.5) / scale)
    points += (x0, y0)
    if tolerance > 0 and len(points) > 3:
        simplified = cv2.approxPolyDP(points.astype(np.float32).reshape(-1, 1, 2), tolerance, True)
        points = simplified.reshape(-1, 2).astype(float)
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    return np.asarray(points[keep] if keep.any() else points[:1], dtype=float)


def join_rings(rings: list[np.ndarray]) -> np.ndarray:
    """One ring from several: each next ring is cut into the joined one at its closest
    vertex pair and travelled around, then the cut is travelled back (zero width). Under
    even-odd filling a joined hole stays a hole and a joined part stays a part."""
    joined = rings[0]
    for ring in rings[1:]:
        distances, nearest = cKDTree(joined).query(ring)
        j = int(np.argmin(distances))
        i = int(nearest[j])
        joined = np.concatenate([joined[: i + 1], ring[j:], ring[: j + 1], joined[i:]], axis=0)
    return joined


def single_polygon(polygons: list[np.ndarray]) -> np.ndarray | None:
    """All of a mask's polygons as one ring (formats with one polygon per object)."""
    return join_rings(polygons) if polygons else None


def coco_box(rle: CocoRle) -> tuple[float, float, float, float]:
    """COCO's box of an RLE's pixels: (x, y, w, h) with x + w the right edge of the last
    column (pycocotools' toBbox)."""
    x, y, w, h = (float(v) for v in mask_utils.toBbox(native(rle)))
    return x, y, w, h


def area(rle: CocoRle) -> int:
    """The number of pixels of an RLE."""
    return int(mask_utils.area(native(rle)))
