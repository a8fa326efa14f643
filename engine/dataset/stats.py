"""What `saengine inspect` collects while it verifies a dataset: per image mask counts,
per mask relative size and centre (the SA-1B paper's statistics), and the problems found."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DatasetStats:
    """What inspect collects: per image mask counts, per mask relative size and centre."""

    problems: list[str] = field(default_factory=list)
    images: int = 0
    masks_per_image: list[int] = field(default_factory=list)
    relative_sizes: list[float] = field(default_factory=list)
    centres: list[tuple[float, float]] = field(default_factory=list)
    annotation_ids: set[int] = field(default_factory=set)

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")
