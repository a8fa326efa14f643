"""Generation jobs on a real two-node Ray cluster, submitted with `jobs/submit.sh` (the Ray
Jobs CLI with the repository as working directory and a runtime env), as users run them.

The worker node holds the only `model_node` resource, so the model workers run there and
the CPU tasks on the head. Both nodes run on this machine and share the head's temporary
folder, as nodes started with plain `ray start` on one machine do: Ray then unpacks each new
working directory a second time, over the first copy, while the job runs in it (the cause of
the bare "[Errno 2] No such file or directory" of earlier versions). Every submission here
gets a fresh copy of the repository, so every one goes through that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.engine.inputs import write_good_photos
from tests.engine.jobrun import committed, dataset_files, kill9, run_saengine, wait_for
from tests.engine.raycluster import LocalCluster, Node

pytestmark = pytest.mark.slow

NUM_PHOTOS = 4
SUBMISSIONS = 2
JOB = [
    "model=demo",
    "generator=demo",
    "generator.points_per_side=2",
    "images.max_short_side=96",
    "images_per_shard=1",
    # submit.sh's defaults are for GPU nodes: one CPU model worker on the model node here.
    "resources.gpus_per_actor=0",
    "resources.cpus_per_actor=1",
    "resources.max_in_flight=2",
    "resources.actor_resources={model_node: 1}",
    "resources.capacity_wait_s=20",
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_good_photos(folder, count=NUM_PHOTOS)
    return folder


# The lost-node case needs images that take the model a while (64 points each, not 4), so
# that the node dies with images left to do, not after the last one is done.
SLOWER = ("generator.points_per_side=8",)


def _local_run(photos: Path, output: Path, *overrides: str) -> Path:
    """The same job on an embedded local Ray."""
    local = [a for a in JOB if not a.startswith("resources.actor_resources")]
    result = run_saengine(
        "generate", f"input={photos}", f"output={output}", "ray.num_cpus=2", *local, *overrides
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _local_run(photos, tmp_path_factory.mktemp("reference") / "dataset")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster.create()
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1, resources={"model_node": 1})
        yield cluster
    finally:
        cluster.stop()


def _repository_copy(cluster: LocalCluster, name: str) -> Path:
    """The repository's files (as checked out here) and one file of its own: a working
    directory Ray has not seen before."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    target = cluster.root / "submissions" / name
    for relative in filter(None, (entry.decode() for entry in listed)):
        source = REPO / relative
        if source.is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)
    (target / "SUBMISSION").write_text(name)
    return target


def _submit(
    cluster: LocalCluster, name: str, *overrides: str, wait: bool = True
) -> subprocess.Popen:
    copy = _repository_copy(cluster, name)
    env = {
        **cluster.env,
        "RAY_ADDRESS": cluster.dashboard,
        "GPUS": "1",
        "SUBMISSION_ID": name,
        "RUNTIME_ENV_JSON": json.dumps({"env_vars": {"OMP_NUM_THREADS": "1"}}),
    }
    log = (cluster.root / f"{name}.submit.log").open("w")
    process = subprocess.Popen(
        ["bash", str(copy / "jobs" / "submit.sh"), *JOB, *overrides],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    if wait:
        process.wait(timeout=900)
    return process


def _status(cluster: LocalCluster, name: str) -> str:
    return cluster.ray("job", "status", name).stdout


def _logs(cluster: LocalCluster, name: str) -> str:
    """The job's logs, after what `submit.sh` printed (for failures that stop it early)."""
    submitted = (cluster.root / f"{name}.submit.log").read_text()
    return submitted + "\n" + cluster.ray("job", "logs", name).stdout


def test_submissions_run_the_model_on_the_worker_node_and_match_a_local_run(
    cluster: LocalCluster, photos: Path, reference: Path, tmp_path: Path
) -> None:
    model_node = cluster.node_id_with("model_node")
    for attempt in range(SUBMISSIONS):
        name = f"generate-{attempt}-{os.getpid()}"
        output = tmp_path / name
        process = _submit(cluster, name, f"input={photos}", f"output={output}")
        logs = _logs(cluster, name)
        assert process.returncode == 0, logs[-3000:]
        assert f"{name}' succeeded" in _status(cluster, name)
        assert "generate: 100%" in logs and "committed sa_000003.tar" in logs
        assert f"dataset: {output}" in logs and "images: 4 ok, 0 failed" in logs
        assert dataset_files(output) == dataset_files(reference)
        (run,) = (output / "runs").iterdir()
        workers = json.loads((run / "run.json").read_text())["model_workers"]
        assert [w["node_id"] for w in workers] == [model_node]
        assert not list((run).glob("nodes*")), "the visibility markers are cleaned up"


def test_an_output_that_a_node_does_not_see_is_refused(
    cluster: LocalCluster, photos: Path, tmp_path: Path
) -> None:
    """A node in a private mount namespace where the output's folder is another (empty)
    filesystem: a local output that the cluster's nodes do not share."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a node with its own filesystem view")
    hidden = tmp_path / "not-shared"
    hidden.mkdir()
    root = ["--map-root-user"] if os.geteuid() != 0 else []
    prefix = [
        "unshare",
        *root,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs tmpfs "$0" && exec "$@"',
        str(hidden),
    ]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a mount namespace here")
    node = cluster.add_node(num_cpus=1, resources={}, prefix=prefix)
    try:
        output = hidden / "dataset"
        name = f"unshared-{os.getpid()}"
        process = _submit(cluster, name, f"input={photos}", f"output={output}")
        logs = _logs(cluster, name)
        assert process.returncode != 0 and f"{name}' failed" in _status(cluster, name)
        error = sorted({line for line in logs.splitlines() if line.startswith("saengine: error:")})
        assert len(error) == 1, logs[-3000:]
        assert "local folder that 1 of the 3 nodes do not share" in error[0]
        assert "object storage" in error[0]
        assert not any((output).glob("sa_*.tar"))
    finally:
        cluster.stop_node(node)
        cluster.nodes.remove(node)


def test_losing_the_model_node_stops_the_job_and_a_resubmission_completes(
    cluster: LocalCluster, photos: Path, tmp_path: Path
) -> None:
    """kill -9 of the model node's raylet mid-job: no other node can host a model worker,
    so the job stops with a clear error; with the node back, a resubmission resumes."""
    reference = _local_run(photos, tmp_path / "reference", *SLOWER)
    output = tmp_path / "dataset"
    name = f"lost-node-{os.getpid()}"
    job = (f"input={photos}", f"output={output}", *SLOWER)
    process = _submit(cluster, name, *job, wait=False)
    wait_for(lambda: committed(output) >= 1, "a committed shard", process)
    model_node = _node_with(cluster, "model_node")
    kill9(model_node.raylet_pid())
    assert process.wait(timeout=600) != 0
    logs = _logs(cluster, name)
    assert f"{name}' failed" in _status(cluster, name)
    error = sorted({line for line in logs.splitlines() if line.startswith("saengine: error:")})
    assert len(error) == 1, logs[-3000:]
    assert "no node of the cluster can host a model worker" in error[0]
    assert "model_node=1" in error[0] and "rerun" in error[0]
    assert 1 <= committed(output) < NUM_PHOTOS
    assert not (output / ".lock").exists()
    model_node.process.wait(timeout=120)
    cluster.nodes.remove(model_node)
    cluster.add_node(num_cpus=1, resources={"model_node": 1})
    again = f"lost-node-resumed-{os.getpid()}"
    process = _submit(cluster, again, *job)
    logs = _logs(cluster, again)
    assert process.returncode == 0, logs[-3000:]
    assert "from earlier runs" in logs
    assert dataset_files(output) == dataset_files(reference)


def _node_with(cluster: LocalCluster, resource: str) -> Node:
    (node,) = [n for n in cluster.nodes if resource in n.resources]
    return node
