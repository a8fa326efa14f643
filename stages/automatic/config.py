"""Generator configuration with the official parameter names, validated, and presets."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GeneratorConfig:
    """Settings of the automatic mask generator (official names and defaults).

    max_mask_area_frac: drop masks covering this fraction of the image or more (None: off).
    drop_small_masks: with min_mask_region_area > 0, drop a mask whose largest component is
    smaller than that area instead of keeping its largest component (the paper's rule; the
    official code keeps it).
    point_grids: explicit per-layer grids (XY in [0, 1]) instead of points_per_side.
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    max_mask_area_frac: float | None = None
    drop_small_masks: bool = False
    point_grids: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if self.points_per_side is not None and self.points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {self.points_per_side}")
        if self.point_grids is not None:
            self._check_grids(self.point_grids)
        if self.points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {self.points_per_batch}")
        for name in (
            "pred_iou_thresh",
            "stability_score_thresh",
            "box_nms_thresh",
            "crop_nms_thresh",
        ):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("crop_overlap_ratio", self.crop_overlap_ratio, 0.0, 1.0, upper_open=True)
        if self.stability_score_offset < 0:
            raise ValueError(
                f"stability_score_offset must be >= 0, got {self.stability_score_offset}"
            )
        if self.crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {self.crop_n_layers}")
        if self.crop_n_points_downscale_factor < 1:
            raise ValueError(
                "crop_n_points_downscale_factor must be >= 1, "
                f"got {self.crop_n_points_downscale_factor}"
            )
        if self.min_mask_region_area < 0:
            raise ValueError(f"min_mask_region_area must be >= 0, got {self.min_mask_region_area}")
        if self.max_mask_area_frac is not None:
            _check_range("max_mask_area_frac", self.max_mask_area_frac, 0.0, 1.0, lower_open=True)

    def _check_grids(self, grids: tuple[np.ndarray, ...]) -> None:
        if len(grids) != self.crop_n_layers + 1:
            raise ValueError(
                f"point_grids has {len(grids)} grids; crop_n_layers={self.crop_n_layers} needs "
                f"{self.crop_n_layers + 1}"
            )
        for grid in grids:
            grid = np.asarray(grid)
            if grid.ndim != 2 or grid.shape[1] != 2 or grid.min() < 0 or grid.max() > 1:
                raise ValueError("each point grid must be N x 2 XY in [0, 1]")

    def with_overrides(self, **overrides: Any) -> GeneratorConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown generator parameter(s) {unknown}; known: {sorted(known)}")
        if "point_grids" in overrides and "points_per_side" not in overrides:
            overrides["points_per_side"] = None
        return replace(self, **overrides)


def _check_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    lower_open: bool = False,
    upper_open: bool = False,
) -> None:
    below = value <= low if lower_open else value < low
    above = value >= high if upper_open else value > high
    if below or above:
        left, right = "(" if lower_open else "[", ")" if upper_open else "]"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value}")


PRESETS: dict[str, GeneratorConfig] = {
    # Exactly the official SamAutomaticMaskGenerator defaults.
    "official": GeneratorConfig(),
    # The paper's appendix B: full image + 2x2 + 4x4 crops with 32/16/8 point grids.
    "sa1b": GeneratorConfig(
        crop_n_layers=2,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=100,
        max_mask_area_frac=0.95,
        drop_small_masks=True,
    ),
}


def build_generator_config(preset: str = "official", **overrides: Any) -> GeneratorConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown generator preset {preset!r}; known: {', '.join(PRESETS)}")
    return PRESETS[preset].with_overrides(**overrides)
