"""The cluster recipes in jobs/: submit.sh is valid shell, the KubeRay RayJob is a valid
ray.io/v1 RayJob (checked against the resource's schema, no Kubernetes here), and both run
the same `saengine generate` command."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from engine.cli import compose_config
from engine.generation.job import JobSettings

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
SCHEMA = REPO / "tests" / "data" / "kuberay_rayjob_v1.schema.yaml"
PLACES = ["input=s3://b/i", "output=s3://b/o", "model.checkpoint=x"]


def _settings(overrides: list[str]) -> JobSettings:
    return JobSettings.from_config(compose_config("generate", overrides))


def _rayjob() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((JOBS / "kuberay" / "rayjob.yaml").read_text())
    return manifest


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text()))


def _submit_overrides(gpus: int) -> list[str]:
    script = (JOBS / "submit.sh").read_text()
    body = re.search(r"-- saengine generate \\\n(.*?)\"\$@\"", script, re.DOTALL)
    assert body, "submit.sh no longer runs saengine generate"
    overrides = [line.strip().rstrip("\\").strip() for line in body.group(1).splitlines()]
    return [
        o.replace('"$GPUS"', str(gpus)).replace("$((GPUS * 6))", str(gpus * 6))
        for o in overrides
        if o
    ]


def test_submit_script_is_valid_shell() -> None:
    check = subprocess.run(["bash", "-n", str(JOBS / "submit.sh")], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()


def test_rayjob_follows_the_kuberay_schema() -> None:
    errors = sorted(_validator().iter_errors(_rayjob()), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda m: m["spec"].update(shutdownAfterJobFinish=True), "spec"),
        (lambda m: m["spec"].update(submissionMode="K8sMode"), "submissionMode"),
        (lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "0"),
        (lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="2"), "2"),
        (
            lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"].update(rayStartParams={"x": 1}),
            "x",
        ),
        (lambda m: m.update(apiVersion="ray.io/v1alpha2"), "apiVersion"),
    ],
)
def test_the_schema_rejects_broken_rayjobs(change: Any, where: str) -> None:
    manifest = copy.deepcopy(_rayjob())
    change(manifest)
    errors = list(_validator().iter_errors(manifest))
    assert errors and any(where in str(e.absolute_path) + e.message for e in errors)


def test_rayjob_runs_the_submit_script_command() -> None:
    manifest = _rayjob()
    command = shlex.split(manifest["spec"]["entrypoint"])
    assert command[:2] == ["saengine", "generate"]
    workers = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus = int(
        workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    )
    total = gpus * int(workers["replicas"])
    from_rayjob = _settings([*command[2:], *PLACES])
    from_script = _settings([*_submit_overrides(total), *command[2:], *PLACES])
    assert from_rayjob == from_script
    assert from_rayjob.resources.model_actors == total and from_rayjob.resources.gpus_per_actor == 1
    assert from_rayjob.generator.crop_n_layers == 2  # the sa1b preset
    assert from_rayjob.image_options.privacy == "blur"  # SA-1B's released images


def test_ray_job_submit_recipe_composes() -> None:
    settings = _settings([*_submit_overrides(8), *PLACES])
    assert settings.resources.model_actors == 8 and settings.images_per_shard == 11000
