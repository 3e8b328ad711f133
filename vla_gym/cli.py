"""The `vla-gym` command: envs, rollout, doctor."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import vla_gym

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Vision-language-action robot learning in simulation.")
console = Console()


def _write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {path}")


@app.command()
def envs(json_path: Path | None = typer.Option(None, "--json", help="Write the list here.")):
    """List every registered env id with its action contract."""
    import gymnasium as gym

    table = Table("env id", "action contract", "max steps")
    rows = []
    for env_id in vla_gym.ENV_TABLE:
        env = gym.make(env_id, obs_mode="state")
        contract = env.unwrapped.action_contract
        table.add_row(env_id, contract.describe(), str(env.spec.max_episode_steps))
        rows.append({"id": env_id, "action_contract": contract.describe(),
                     "action_dims": list(contract.dims),
                     "max_episode_steps": env.spec.max_episode_steps})
        env.close()
    console.print(table)
    _write_json(json_path, {"envs": rows})


@app.command()
def rollout(
    env: str = typer.Option(..., "--env", help="Env id, e.g. vla_gym/TabletopPick-v0."),
    policy: str = typer.Option("random", "--policy", help="random | expert"),
    episodes: int = typer.Option(10, "--episodes", min=1),
    seed: int = typer.Option(0, "--seed"),
    num_envs: int = typer.Option(1, "--num-envs", min=1),
    async_envs: bool = typer.Option(False, "--async/--sync", help="Vector env mode."),
    video: Path | None = typer.Option(None, "--video", help="MP4 of the first episodes."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the summary here."),
    split: str = typer.Option("train", "--split", help="Instruction split: train|test|all."),
):
    """Run seeded episodes and report success (95% Wilson interval), return, length, steps/s."""
    from vla_gym.rollout import run_rollouts

    if env not in vla_gym.ENV_TABLE:
        raise typer.BadParameter(f"unknown env {env!r}; valid: {list(vla_gym.ENV_TABLE)}")
    summary = run_rollouts(
        env, policy, episodes=episodes, seed=seed, num_envs=num_envs,
        vectorization_mode="async" if async_envs else "sync", video_path=video,
        progress=sys.stderr.isatty(), env_kwargs={"instruction_split": split},
    )
    lo, hi = summary.success_ci95
    console.print(
        f"{env} policy={policy} episodes={episodes} seed={seed}: "
        f"success {summary.success_rate:.1%} (95% CI {lo:.1%}-{hi:.1%}), "
        f"mean return {summary.mean_return:.2f}, mean length {summary.mean_length:.1f}, "
        f"{summary.steps_per_second:.0f} steps/s"
    )
    for task, stats in summary.per_task.items():
        console.print(f"  {task}: {stats['success_rate']:.1%} over {stats['episodes']} episodes")
    if video is not None:
        console.print(f"wrote {video}")
    if json_path is not None:
        summary.to_json(json_path)
        console.print(f"wrote {json_path}")


@app.command()
def doctor(
    json_path: Path | None = typer.Option(None, "--json", help="Write the report here."),
    frames: int = typer.Option(300, "--frames", min=10),
):
    """Check headless rendering: backend, renderer string and measured frames/s."""
    from vla_gym import gl_backend

    report: dict = {"python": sys.version.split()[0], "vla_gym": vla_gym.__version__}
    problem = gl_backend.describe_problem()
    try:
        import gymnasium as gym
        import mujoco

        from vla_gym.envs.rendering import renderer_info

        report["mujoco"] = mujoco.__version__
        report.update(renderer_info())
        env = gym.make("vla_gym/TabletopPick-v0")
        env.reset(seed=0)
        renderer = env.unwrapped._obs_renderer
        start = time.perf_counter()
        for _ in range(frames):
            image = renderer.render(env.unwrapped.data, "main")
        report["frames_per_second_96px"] = frames / (time.perf_counter() - start)
        report["image_mean"] = float(image.mean())
        env.close()
        if report["image_mean"] < 1.0:
            raise RuntimeError("rendered frames are black")
        report["ok"] = True
    except Exception as exc:  # report every failure mode the same way
        report["ok"] = False
        report["error"] = f"{type(exc).__name__}: {exc}"
        if problem:
            report["hint"] = problem
    for key, value in report.items():
        console.print(f"{key:>24}: {value}")
    _write_json(json_path, report)
    if not report["ok"]:
        raise typer.Exit(code=1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
