"""The Ray a command runs on: shared by generation jobs, campaigns and training."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig


@contextlib.contextmanager
def ray_session(cfg: DictConfig) -> Iterator[None]:
    """The Ray a command runs on: the one already initialized, the cluster at ray.address,
    or an embedded local Ray (shut down afterwards)."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = cfg.ray.address
    kwargs: dict[str, Any] = {"log_to_driver": bool(cfg.ray.log_to_driver)}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()
