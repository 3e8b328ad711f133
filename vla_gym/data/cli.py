"""``vla-gym collect``: a typer command, registered on the main app with
``app.command()(collect)``. A plain function too: its defaults are real values."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()


def collect(
    env: Annotated[str, typer.Option("--env", help="Env id, e.g. vla_gym/TabletopPick-v0.")],
    episodes: Annotated[int, typer.Option("--episodes", min=1,
                                          help="Episodes 0..N-1 (episode j uses seed S+j).")],
    out: Annotated[Path, typer.Option(
        "--out", help="Dataset root (a MINARI_DATASETS_PATH); rerun to resume.")],
    num_envs: Annotated[int, typer.Option("--num-envs", min=1, help="Parallel envs.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed S of episode 0.")] = 0,
    image_size: Annotated[int, typer.Option("--image-size", min=16)] = 96,
    split: Annotated[str, typer.Option("--split", help="Instruction split: train|test|all.")
                     ] = "train",
    obs_mode: Annotated[str, typer.Option(
        "--obs-mode", help="rgb (images) | state (no images).")] = "rgb",
    cameras: Annotated[str, typer.Option(
        "--cameras", help="Comma-separated cameras to record, main first, e.g. main,wrist.")
    ] = "main",
    jpeg: Annotated[bool, typer.Option(
        "--jpeg/--lossless", help="JPEG images (lossy, ~3x smaller) or exact pixels.")] = False,
    async_envs: Annotated[bool | None, typer.Option(
        "--async/--sync", help="Vector env mode (default: async when --num-envs > 1).")
    ] = None,
    expert_option: Annotated[list[str] | None, typer.Option(
        "--expert-option", help="KEY=VALUE for the scripted expert (repeatable; VALUE as "
        "JSON), e.g. square_cubes=false or lift_speed=0.08.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the summary here.")
                         ] = None,
) -> None:
    """Record scripted-expert episodes as a Minari dataset (resumable; kills keep episodes)."""
    import vla_gym
    from vla_gym.data import collect_demos
    from vla_gym.data.collect import ExpertOptionsError
    from vla_gym.data.layout import (
        CorruptDatasetError,
        DatasetLockedError,
        IncompatibleDatasetError,
    )

    if env not in vla_gym.ENV_TABLE:
        raise typer.BadParameter(f"unknown env {env!r}; valid: {list(vla_gym.ENV_TABLE)}",
                                 param_hint="--env")
    from vla_gym.types import INSTRUCTION_SPLITS, OBS_MODES

    for value, valid, hint in ((obs_mode, OBS_MODES, "--obs-mode"),
                               (split, INSTRUCTION_SPLITS, "--split")):
        if value not in valid:
            raise typer.BadParameter(f"{value!r} is not one of {valid}", param_hint=hint)
    mode = None if async_envs is None else ("async" if async_envs else "sync")
    try:
        summary = collect_demos(
            env, episodes, out, num_envs=num_envs, seed=seed, vectorization_mode=mode,
            jpeg=jpeg, env_kwargs={"image_size": image_size, "instruction_split": split,
                        "obs_mode": obs_mode, "cameras": _cameras(cameras)},
            expert_options=_expert_options(expert_option or []),
            progress=sys.stderr.isatty())
    except ExpertOptionsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expert-option") from None
    except (IncompatibleDatasetError, CorruptDatasetError, DatasetLockedError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    _report(summary, out)
    if json_path is not None:
        summary.to_json(json_path)
        console.print(f"wrote {json_path}")
    if summary.interrupted:
        raise typer.Exit(code=130)


def _expert_options(pairs: list[str]) -> dict[str, Any]:
    """``["square_cubes=false", ...]`` -> ``{"square_cubes": False, ...}`` (values as JSON,
    else as text)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--expert-option")
        try:
            options[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            options[key.strip()] = text
    return options


def _cameras(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names or names[0] != "main":
        raise typer.BadParameter(f"{text!r}: list cameras main first, e.g. main,wrist",
                                 param_hint="--cameras")
    return names


def _report(summary, out: Path) -> None:
    state = "interrupted" if summary.interrupted else "done"
    line = (f"{summary.env_id}: {state}, {summary.recorded_now} episodes recorded now, "
            f"{summary.skipped} already there")
    if summary.recorded_now:
        line += (f"; success {summary.success_rate:.1%} of new ones; "
                 f"{summary.episodes_per_second:.2f} episodes/s, "
                 f"{summary.frames_per_second:.0f} frames/s")
    console.print(line)
    console.print(
        f"dataset {summary.dataset_id} at {summary.path}: {summary.frames} frames"
        + (f", {summary.bytes_per_frame / 1000:.1f} KB/frame" if summary.frames else "")
        + (f"; {summary.pending} finished episodes wait for earlier ones" if summary.pending
           else ""))
    if summary.interrupted:
        console.print("rerun the same command to record the remaining episodes")
    console.print(f"load: vla_gym.data.load_demos({str(out)!r}), or MINARI_DATASETS_PATH={out} "
                  f"and minari.load_dataset({summary.dataset_id!r})")
