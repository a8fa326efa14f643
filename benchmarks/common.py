"""Helpers shared by the benchmark scripts: timing and a description of the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    text = f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {threads} threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], object], *, repeats: int, warmup: int = 1, device: torch.device | None = None
) -> float:
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_median_seconds(
    fn_a: Callable[[], object], fn_b: Callable[[], object], *, repeats: int, warmup: int = 1
) -> tuple[float, float]:
    """Medians of two functions timed alternately (a, b, a, b, ...), so that a machine
    whose speed drifts (shared cores, other tenants) affects both alike."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((fn_a, times[0]), (fn_b, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])
