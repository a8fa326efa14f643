"""The Ray a command runs on: shared by generation jobs, campaigns and training."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig

from engine.storage import Storage


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


def check_output_shared(storage: Storage, run_dir: str) -> None:
    """On a cluster, a local output folder must be one folder that every node running the
    job's tasks sees (a shared filesystem mounted at the same path): otherwise staged files
    would scatter over several disks. A task on each node reads a marker the driver wrote
    and writes its own, which the driver then looks for. Object storage needs no check."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not storage.local:
        return
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if all(node["NodeID"] == here for node in nodes):
        return
    marker = f"{run_dir}/nodes/{uuid.uuid4().hex}"
    storage.write_bytes(marker, socket.gethostname().encode())
    probe: Any = ray.remote(num_cpus=0, max_retries=0)(_probe_output)
    refs = {
        node["NodeID"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(storage, marker, node["NodeID"])
        for node in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    blind = []
    for node in nodes:
        ref = refs[node["NodeID"]]
        seen = ref in ready and _safe_get(ref) and storage.exists(f"{marker}.{node['NodeID']}")
        if not seen:
            blind.append(f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})")
    storage.remove(f"{run_dir}/nodes")
    if blind:
        raise ClusterError(
            f"output {storage.url()} is a local folder that {len(blind)} of the "
            f"{len(nodes)} nodes do not share ({', '.join(blind[:4])}); on a cluster, write "
            "to object storage (output=s3://bucket/prefix, gs://, ...) or to a filesystem "
            "mounted at the same path on every node"
        )


class ClusterError(RuntimeError):
    """The cluster cannot run the job as configured (one-line message)."""


PROBE_TIMEOUT_S = 120.0


def _probe_output(storage: Storage, marker: str, node_id: str) -> bool:
    """On one node: whether the driver's marker is there; leaves this node's own marker."""
    if not storage.exists(marker):
        return False
    storage.write_bytes(f"{marker}.{node_id}", socket.gethostname().encode())
    return True


def _safe_get(ref: Any) -> bool:
    import ray

    try:
        return bool(ray.get(ref))
    except ray.exceptions.RayError:
        return False
