"""`collect` as a command on a typer app, end to end."""

from __future__ import annotations

import json

import numpy as np
import typer
from typer.testing import CliRunner

from vla_gym.data import load_demos
from vla_gym.data.cli import collect
from vla_gym.training.demos import Demos

app = typer.Typer()
app.command()(collect)


@app.command()
def envs() -> None:  # a second command, so `collect` is a subcommand as on the main app
    pass


runner = CliRunner()
ARGS = ["collect", "--env", "vla_gym/TabletopPick-v0", "--episodes", "2", "--seed", "3",
        "--image-size", "32"]


def test_collect_command_end_to_end(tmp_path):
    report = tmp_path / "summary.json"
    result = runner.invoke(app, [*ARGS, "--out", str(tmp_path / "demos"), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "2 episodes recorded now" in result.output and "KB/frame" in result.output
    summary = json.loads(report.read_text())
    assert summary["recorded_now"] == 2 and summary["dataset_id"] == (
        "vla_gym/TabletopPick/expert-v0")
    assert 0 < summary["bytes_per_frame"] < 32 * 32 * 3
    demos = load_demos(tmp_path / "demos")
    assert len(demos) == 2 and [m["seed"] for m in demos.episode_metadata()] == [3, 4]

    again = runner.invoke(app, [*ARGS, "--out", str(tmp_path / "demos")])
    assert again.exit_code == 0 and "2 already there" in again.output

    state = runner.invoke(app, [*ARGS, "--out", str(tmp_path / "state"), "--obs-mode", "state"])
    assert state.exit_code == 0, state.output
    assert "image" not in load_demos(tmp_path / "state").observation_space.spaces

    wrist = runner.invoke(app, [*ARGS, "--out", str(tmp_path / "wrist"), "--cameras",
                                "main,wrist"])
    assert wrist.exit_code == 0, wrist.output
    recorded = Demos.from_dataset(tmp_path / "wrist")
    assert set(recorded.views) == {"wrist_image"}
    # where the target is in the wrist image, recorded for the wrist view's grounding loss
    assert recorded.wrist_target_pixel.shape == (len(recorded), 2)
    assert np.isfinite(recorded.wrist_target_pixel).all()
    assert not np.allclose(recorded.wrist_target_pixel, recorded.target_pixel)
    # and where the instruction's landmark is, in both views (the target itself when the
    # instruction names no relation)
    for name in ("landmark_pixel", "wrist_landmark_pixel"):
        assert getattr(recorded, name).shape == (len(recorded), 2)
        assert np.isfinite(getattr(recorded, name)).all()
    assert Demos.from_dataset(tmp_path / "demos").wrist_target_pixel is None


def test_collect_command_rejects_bad_input(tmp_path):
    out = ["--out", str(tmp_path)]
    unknown = runner.invoke(app, ["collect", "--env", "nope-v0", "--episodes", "1", *out])
    assert unknown.exit_code == 2 and "unknown env" in unknown.output
    bad_mode = runner.invoke(app, [*ARGS, *out, "--obs-mode", "depth"])
    assert bad_mode.exit_code == 2 and "depth" in bad_mode.output
    assert runner.invoke(app, [*ARGS, *out]).exit_code == 0
    other_seed = [a if a != "3" else "4" for a in ARGS]
    clash = runner.invoke(app, [*other_seed, *out])
    assert clash.exit_code == 2 and "cannot resume" in clash.output


def test_expert_options_reach_the_recorded_expert(tmp_path):
    """Seed 2's target is a cube: the default expert turns the gripper square to it, the one
    recorded with square_cubes=false keeps its heading (yaw commands near zero)."""
    args = ["collect", "--env", "vla_gym/TabletopPick-v0", "--episodes", "1", "--seed", "2",
            "--obs-mode", "state"]
    turns = {}
    for name, extra in (("square", []), ("across", ["--expert-option", "square_cubes=false"])):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        turns[name] = float(np.abs(load_demos(tmp_path / name).episode(0).actions[:, 5]).max())
    assert turns["square"] > 0.5 and turns["across"] < 0.05
    # the options are part of what a resumed collection must repeat
    clash = runner.invoke(app, [*args, "--out", str(tmp_path / "across")])
    assert clash.exit_code == 2 and "expert_options" in clash.output


def test_bad_expert_options_are_refused_before_recording(tmp_path):
    out = ["--out", str(tmp_path / "demos")]
    unknown = runner.invoke(app, [*ARGS, *out, "--expert-option", "speed=0.5"])
    assert unknown.exit_code == 2 and "square_cubes" in unknown.output  # names valid ones
    bad_value = runner.invoke(app, [*ARGS, *out, "--expert-option", "lift_speed=2"])
    assert bad_value.exit_code == 2 and "lift_speed must be a number" in bad_value.output
    not_a_pair = runner.invoke(app, [*ARGS, *out, "--expert-option", "square_cubes"])
    assert not_a_pair.exit_code == 2 and "KEY=VALUE" in not_a_pair.output
    assert not (tmp_path / "demos").exists()
