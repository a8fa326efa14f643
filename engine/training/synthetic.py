"""Synthetic scenes with exact instance masks, written as SA-1B datasets.

Each scene is a textured background with textured shapes placed in depth order, so later
shapes occlude earlier ones and every mask is the exact visible region. Some objects are
made of two parts with different textures (a body and an attached cap): their parts and the
whole object are all annotated, so a point on a part is ambiguous between part and whole,
as in the paper's multimask setting. No pretrained weights are needed to make them, which
is why tests, the bundled model and evaluation use them.

Two families (`SceneOptions.family`): `shapes`, what the bundled model was trained on
(ellipses, rectangles and triangles with stripes, checks, speckle or gradients); and
`clutter`, a domain it has not seen: stars, rings (with a hole), crescents and wavy blobs
with dots, concentric rings or plaid, over a background strewn with small unannotated marks
under an uneven light. The loop benchmark's campaigns annotate `clutter` scenes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
from omegaconf import DictConfig

from engine.dataset import image_key, shard_name
from engine.dataset.writer import DatasetWriter, image_entry, numbered
from engine.storage import Storage
from stages.automatic.geometry import box_xyxy_to_xywh
from stages.automatic.rle import coco_encode, masks_to_rles

SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_003}
FAMILIES = ("shapes", "clutter")


@dataclass(frozen=True)
class SceneOptions:
    """size: image side in pixels; objects: (min, max) per scene; min_area: smallest mask
    kept (pixels); part_probability: chance that an object has two parts; family: shapes |
    clutter (see the module docstring)."""

    size: int = 256
    objects: tuple[int, int] = (3, 7)
    min_area: int = 48
    part_probability: float = 0.4
    family: str = "shapes"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.size < 32:
            raise ValueError(f"scene size must be >= 32, got {self.size}")
        if not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects must be (min, max) with 1 <= min <= max, got {self.objects}")


@dataclass
class Scene:
    """image: H x W x 3 uint8; masks: N x H x W bool, exact visible regions."""

    image: np.ndarray
    masks: np.ndarray


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """H x W x 3 float in [0, 255]: a colour with stripes, checks, noise or a gradient."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(20, 235, 3).astype(np.float32)
    other = rng.uniform(20, 235, 3).astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 16)
        weight = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * freq * np.pi) > 0
    elif kind == 1:
        cells = rng.integers(3, 12)
        weight = ((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 == 0
    elif kind == 2:
        weight = rng.random((size, size)) < 0.25
    else:
        weight = xx * rng.uniform(0.3, 1) + yy * rng.uniform(0, 0.7)
    weight = np.asarray(weight, dtype=np.float32)[:, :, None]
    return base * (1 - 0.35 * weight) + other * 0.35 * weight


def _shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random ellipse, rectangle or triangle, as an H x W bool mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = rng.uniform(0.15, 0.85, 2) * size
    rx, ry = rng.uniform(0.06, 0.25, 2) * size
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    kind = rng.integers(3)
    if kind == 0:
        return np.asarray((u / rx) ** 2 + (v / ry) ** 2 <= 1)
    if kind == 1:
        return np.asarray((np.abs(u) <= rx) & (np.abs(v) <= ry))
    return np.asarray((v >= -ry) & (np.abs(u) <= rx * (ry - v) / (2 * ry)))


def _clutter_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """The clutter family's textures: dots, concentric rings or plaid (H x W x 3 float)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(20, 235, 3).astype(np.float32)
    other = rng.uniform(20, 235, 3).astype(np.float32)
    kind = rng.integers(3)
    freq = rng.uniform(6, 20)
    if kind == 0:
        cells = (xx * freq % 1 - 0.5) ** 2 + (yy * freq % 1 - 0.5) ** 2
        weight = cells < rng.uniform(0.02, 0.1)
    elif kind == 1:
        cx, cy = rng.uniform(0, 1, 2)
        weight = np.sin(np.hypot(xx - cx, yy - cy) * freq * np.pi) > 0
    else:
        weight = (np.sin(xx * freq * np.pi) > 0.6) | (np.sin(yy * freq * np.pi) > 0.6)
    weight = np.asarray(weight, dtype=np.float32)[:, :, None]
    return base * (1 - 0.45 * weight) + other * 0.45 * weight


def _clutter_shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """A star, ring, crescent or wavy blob, as an H x W bool mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = rng.uniform(0.15, 0.85, 2) * size
    radius = rng.uniform(0.12, 0.3) * size
    dx, dy = xx - cx, yy - cy
    distance, angle = np.hypot(dx, dy), np.arctan2(dy, dx)
    kind = rng.integers(4)
    if kind == 0:
        points, depth = int(rng.integers(4, 8)), rng.uniform(0.2, 0.4)
        edge = radius * (1 - depth * (0.5 + 0.5 * np.cos(points * angle + rng.uniform(0, 6))))
        return np.asarray(distance <= edge)
    if kind == 1:
        return np.asarray((distance <= radius) & (distance >= radius * rng.uniform(0.3, 0.55)))
    if kind == 2:
        shift = radius * rng.uniform(0.6, 1.0)
        turn = rng.uniform(0, 2 * np.pi)
        inner = np.hypot(dx - shift * np.cos(turn), dy - shift * np.sin(turn)) <= radius * 0.9
        return np.asarray((distance <= radius) & ~inner)
    wave = sum(rng.uniform(0.05, 0.18) * np.cos(k * angle + rng.uniform(0, 6)) for k in range(2, 6))
    return np.asarray(distance <= radius * (1 + wave))


def _clutter_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A clutter texture strewn with small marks (unannotated), under an uneven light."""
    canvas = _clutter_texture(rng, size) * 0.8
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(25, 45))):
        cx, cy = rng.uniform(0, size, 2)
        length, turn = rng.uniform(3, 12), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(turn) + (yy - cy) * np.sin(turn)
        v = -(xx - cx) * np.sin(turn) + (yy - cy) * np.cos(turn)
        mark = (np.abs(u) <= length) & (np.abs(v) <= rng.uniform(0.8, 2.5))
        canvas[mark] = rng.uniform(20, 235, 3)
    return canvas


def _light(rng: np.random.Generator, size: int) -> np.ndarray:
    """An uneven light over the scene: H x W x 1 factor in about [0.6, 1.1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = rng.uniform(0, 1, 2)
    return np.asarray(1.1 - 0.5 * np.clip(np.hypot(xx - cx, yy - cy), 0, 1))[:, :, None]


def _cap(rng: np.random.Generator, body: np.ndarray) -> np.ndarray:
    """A disc attached to the body's edge (the second part of a two-part object)."""
    ys, xs = np.nonzero(body)
    size = body.shape[0]
    top = int(np.argmin(ys))
    cx, cy = xs[top], ys[top]
    radius = max(3.0, 0.35 * np.sqrt(len(xs) / np.pi)) * rng.uniform(0.7, 1.2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.asarray((xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2) & ~body


def make_scene(rng: np.random.Generator, options: SceneOptions) -> Scene:
    size, clutter = options.size, options.family == "clutter"
    texture, shape = (_clutter_texture, _clutter_shape) if clutter else (_texture, _shape)
    canvas = _clutter_background(rng, size) if clutter else _texture(rng, size) * 0.8
    layers: list[list[np.ndarray]] = []  # per object: [whole] or [whole, body, cap]
    for _ in range(int(rng.integers(options.objects[0], options.objects[1] + 1))):
        body = shape(rng, size)
        if body.sum() < options.min_area:
            continue
        parts = [body]
        if rng.random() < options.part_probability:
            parts.append(_cap(rng, body))
        for part in parts:
            canvas[part] = texture(rng, size)[part]
        whole = np.logical_or.reduce(parts)
        layers.append([whole, *parts] if len(parts) > 1 else [whole])
    masks = []
    covered = np.zeros((size, size), dtype=bool)
    for group in reversed(layers):  # front to back: remove what is in front
        visible = [mask & ~covered for mask in group]
        covered |= group[0]
        masks += [mask for mask in visible if mask.sum() >= options.min_area]
    if clutter:
        canvas = canvas * _light(rng, size)
    noise = rng.normal(0, 4, canvas.shape)
    image = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    stacked = np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool)
    return Scene(image=image, masks=stacked)


def scene_record(scene: Scene, image_id: int) -> dict[str, object]:
    """The SA-1B JSON of a scene (point_coords: each mask's most interior pixel)."""
    import torch

    height, width = scene.masks.shape[1:] if len(scene.masks) else scene.image.shape[:2]
    rles = masks_to_rles(torch.from_numpy(scene.masks))
    annotations = []
    for mask, rle in zip(scene.masks, rles):
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
        annotations.append(
            {
                "segmentation": coco_encode(rle),
                "bbox": box_xyxy_to_xywh(box),
                "area": int(mask.sum()),
                "predicted_iou": 1.0,
                "stability_score": 1.0,
                "crop_box": [0, 0, int(width), int(height)],
                "point_coords": [[float(xs.mean()), float(ys.mean())]],
            }
        )
    image = image_entry(image_id, image_key(image_id), width=int(width), height=int(height))
    return {"image": image, "annotations": numbered(image_id, annotations)}


def make_scenes(
    count: int, split: str = "train", seed: int = 0, options: SceneOptions | None = None
) -> Iterator[Scene]:
    """The scenes of `write_synthetic_dataset(split=split, seed=seed, options=options)`, in
    order, without writing them."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    rng = np.random.default_rng([SPLIT_SEEDS[split], seed])
    for _ in range(count):
        yield make_scene(rng, options or SceneOptions())


def scene_jpeg(scene: Scene) -> bytes:
    """The scene's image as a synthetic dataset stores it."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_synthetic_dataset(
    output: str,
    *,
    num_images: int,
    split: str = "train",
    seed: int = 0,
    images_per_shard: int = 64,
    options: SceneOptions | None = None,
) -> list[str]:
    """Write `num_images` scenes as SA-1B shards + manifest; returns the shard names.
    The same (split, seed) always gives the same dataset; splits never share scenes."""
    options = options or SceneOptions()
    writer = DatasetWriter(Storage(output), images_per_shard=images_per_shard)
    for image_id, scene in enumerate(make_scenes(num_images, split, seed, options), start=1):
        writer.add(
            image_id=image_id,
            key=image_key(image_id),
            source=f"synthetic:{split}:{seed}:{image_id}",
            jpeg=scene_jpeg(scene),
            record=scene_record(scene, image_id),
        )
    job = {
        "synthetic": {
            "split": split,
            "seed": seed,
            "num_images": num_images,
            "options": {**asdict(options), "objects": list(options.objects)},
        }
    }
    writer.close(job, summary=job)
    return [f"{shard_name(info.shard)}.tar" for info in writer.shards]


def run_synth(cfg: DictConfig) -> None:
    """`saengine synth`: the scenes of the composed config, written as an SA-1B dataset."""
    options = SceneOptions(
        size=int(cfg.size),
        objects=(int(cfg.objects[0]), int(cfg.objects[1])),
        min_area=int(cfg.min_area),
        part_probability=float(cfg.part_probability),
        family=str(cfg.family),
    )
    shards = write_synthetic_dataset(
        str(cfg.output),
        num_images=int(cfg.num_images),
        split=str(cfg.split),
        seed=int(cfg.seed),
        images_per_shard=int(cfg.images_per_shard),
        options=options,
    )
    print(f"{cfg.num_images} synthetic {cfg.split} scenes in {len(shards)} shards -> {cfg.output}")
