"""The `saengine` command's help and its one-line errors for bad command lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import compose_config
from tests.engine.jobrun import run_saengine


def test_help_explains_commands_and_options() -> None:
    top = run_saengine("--help")
    assert top.returncode == 0 and "generate" in top.stdout and "inspect" in top.stdout
    generate = run_saengine("generate", "--help")
    assert generate.returncode == 0
    for text in (
        "images_per_shard",
        "ray:",
        "model=<bundled|demo|vit_b|vit_h|vit_l>",
        "pred_iou_thresh",
    ):
        assert text in generate.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["generate", "output=/tmp/x"], "input"),
        (["generate", "input=a", "output=b", "model=vit_b"], "checkpoint"),
        (["generate", "input=a", "output=b", "model=vit_q"], "vit_q"),
        (["generate", "input=a", "output=b", "generator.pred_iou=0.5"], "pred_iou"),
        (
            ["generate", "input=a", "output=b", "model=demo", "generator.pred_iou_thresh=2"],
            "pred_iou_thresh",
        ),
        (["generate", "input=/nonexistent/dir", "output=b", "model=demo"], "input not found"),
        (
            ["generate", "input=a", "output=b", "model=vit_b", "model.checkpoint=/no/such.pth"],
            "checkpoint not found: /no/such.pth",
        ),
        (["inspect"], "path"),
        (
            ["generate", f"input={Path(__file__).parent}", "output=/dev/null/out", "model=demo"],
            "cannot create output /dev/null/out",
        ),
    ],
)
def test_bad_command_lines_fail_in_one_line(args: list[str], message: str) -> None:
    result = run_saengine(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("saengine:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_presets_compose_to_the_official_values() -> None:
    official = compose_config("generate", ["input=a", "output=b", "model=demo"]).generator
    assert official.points_per_side == 32 and official.pred_iou_thresh == 0.88
    assert official.crop_overlap_ratio == pytest.approx(512 / 1500)
    sa1b = compose_config(
        "generate", ["input=a", "output=b", "model=demo", "generator=sa1b"]
    ).generator
    assert (sa1b.crop_n_layers, sa1b.crop_n_points_downscale_factor) == (2, 2)
    assert (sa1b.min_mask_region_area, sa1b.max_mask_area_frac) == (100, 0.95)
    demo = compose_config(
        "generate", ["input=a", "output=b", "model=demo", "generator=demo"]
    ).generator
    assert demo.points_per_side == 16 and demo.box_nms_thresh == 0.7


def test_inspect_of_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    result = run_saengine("inspect", str(tmp_path))
    assert result.returncode == 1 and "not a dataset written by saengine" in result.stdout


def test_every_command_is_listed_and_explains_its_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import engine.cli as cli

    assert cli.__doc__ is not None
    top = cli.usage()
    for command in cli.COMMANDS:
        assert f"saengine {command.name} " in cli.__doc__, command.name
        group, _, sub = command.name.partition(" ")
        listing = cli.group_usage(group) if sub else top
        assert f"  {sub or group} " in listing, command.name
        cli.main([*command.name.split(" "), "--help"])
        text = capsys.readouterr().out
        assert text.startswith(f"usage: saengine {command.name}"), command.name
        composed = cli.compose_config(command.config, [], complete=False)
        for key in composed:  # every option is listed, leaves as key=default
            assert f"\n  {key}=" in text or f"\n  {key}." in text, (command.name, key)
