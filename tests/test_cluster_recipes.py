"""The cluster recipes in jobs/ hold command lines that compose into valid job configs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from engine.cli import compose_config
from engine.generation.job import JobSettings

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def _settings(overrides: list[str]) -> JobSettings:
    return JobSettings.from_config(compose_config("generate", overrides))


def test_kuberay_rayjob_entrypoint_composes() -> None:
    manifest = yaml.safe_load((JOBS / "kuberay" / "rayjob.yaml").read_text())
    assert manifest["kind"] == "RayJob" and manifest["apiVersion"] == "ray.io/v1"
    command = shlex.split(manifest["spec"]["entrypoint"])
    assert command[:2] == ["saengine", "generate"]
    settings = _settings(command[2:])
    workers = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus = int(
        workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert settings.resources.gpus_per_actor == 1 and gpus >= 1
    assert settings.generator.crop_n_layers == 2  # the sa1b preset


def test_ray_job_submit_recipe_composes() -> None:
    script = (JOBS / "submit.sh").read_text()
    body = re.search(r"-- saengine generate \\\n(.*?)\"\$@\"", script, re.DOTALL)
    assert body, "submit.sh no longer runs saengine generate"
    overrides = [line.strip().rstrip("\\").strip() for line in body.group(1).splitlines()]
    overrides = [o.replace('"$GPUS"', "8").replace("$((GPUS * 6))", "48") for o in overrides if o]
    settings = _settings([*overrides, "input=s3://b/i", "output=s3://b/o", "model.checkpoint=x"])
    assert settings.resources.model_actors == 8 and settings.images_per_shard == 11000
