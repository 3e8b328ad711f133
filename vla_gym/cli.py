"""The `vla-gym` command: envs, rollout, train, eval, doctor (and collect, bridge, deploy)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

import vla_gym
from vla_gym.jsonfile import write_json

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Vision-language-action robot learning in simulation.")
console = Console()


def _write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        console.print(f"wrote {write_json(path, payload)}")


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
    policy: str = typer.Option(
        "random", "--policy", help="random | expert | PATH of a saved VLAPolicy checkpoint."),
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


train_app = typer.Typer(no_args_is_help=True, help="Train policies: bc, map-planner, reward, rlhf.")
app.add_typer(train_app, name="train")


def _bc_policy_changes(binary_gripper: bool, landmark_map: bool,
                       relation_layers: int = 0) -> dict[str, Any]:
    """The preset changes ``train bc``'s policy options ask for."""
    changes: dict[str, Any] = {}
    if binary_gripper:
        changes["head"] = {"binary_gripper": True}
    if landmark_map:
        changes.setdefault("fusion", {})["landmark_map"] = True
    if relation_layers:
        changes.setdefault("fusion", {})["relation_layers"] = relation_layers
    return changes


@train_app.command("bc")
def train_bc_command(
    dataset: Path = typer.Option(..., "--dataset", help="Demonstrations (vla-gym collect)."),
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoints, logs, policy/)."),
    preset: str = typer.Option("small", "--preset", help="Policy preset (small, base, ...)."),
    steps: int = typer.Option(3000, "--steps", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    eval_every: int = typer.Option(1000, "--eval-every", min=0),
    eval_episodes: int = typer.Option(20, "--eval-episodes", min=1),
    grounding: float = typer.Option(0.0, "--grounding", help="Grounding loss weight."),
    contrastive: float = typer.Option(0.0, "--contrastive", help="Contrastive loss weight."),
    seed: int = typer.Option(0, "--seed"),
    time_budget: float | None = typer.Option(
        None, "--time-budget", min=1, help="Stop training after this many seconds."),
    state_velocities: bool = typer.Option(
        False, "--state-velocities/--no-state-velocities",
        help="Feed the robot's velocities to the policy (off: no copycat shortcut)."),
    grounding_scenes: int = typer.Option(
        0, "--grounding-scenes", min=0,
        help="Further scenes for the grounding loss only: frames along the expert's approach "
             "to each object, no actions (needs --grounding > 0)."),
    relational_grounding: bool = typer.Option(
        False, "--relational-grounding",
        help="Tabletop, with --grounding-scenes: approach each object a spatial relation can "
             "name once more under such an instruction ('the cube left of the plate')."),
    dagger_episodes: int = typer.Option(
        0, "--dagger-episodes", min=0,
        help="DAgger: episodes driven by the policy in training, every state labelled by the "
             "scripted expert and added to the demos."),
    dagger_rounds: int = typer.Option(1, "--dagger-rounds", min=1,
                                      help="Rounds the DAgger episodes come in."),
    precision: str = typer.Option(
        "fp32", "--precision",
        help="fp32, or bf16 (autocast forward passes; faster on CPUs with native bf16)."),
    target_geometry: bool = typer.Option(
        False, "--target-geometry",
        help="Tabletop: lift each camera's target map onto the table with the env's camera "
             "calibration and hand the target's offset from the gripper to the action head "
             "(needs --grounding > 0)."),
    grounding_warmup_steps: int = typer.Option(
        0, "--grounding-warmup-steps", min=0,
        help="Train perception alone first, this many steps of the grounding losses on the "
             "grounding frames (needs --grounding > 0 and --grounding-scenes or other-target "
             "frames); counted in --steps and --time-budget."),
    refit_head_steps: int = typer.Option(
        0, "--refit-head-steps", min=0,
        help="After training, re-initialise the action head and fit it this many steps on the "
             "frozen perception of the demos, un-augmented (0 = off)."),
    binary_gripper: bool = typer.Option(
        False, "--binary-gripper",
        help="Command the gripper fully open or closed, by the sign of the prediction "
             "(actions with a 'grip' dimension)."),
    landmark_map: bool = typer.Option(
        False, "--landmark-map",
        help="FiLM: a landmark map finds the object a spatial relation names the target by, "
             "and the target map reads each cell's offset from it (needs --grounding > 0)."),
    relation_layers: int = typer.Option(
        0, "--relation-layers", min=0,
        help="FiLM: self-attention layers over the main camera's modulated image tokens "
             "before the target map, for instructions naming an object by a spatial relation."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN's latest checkpoint."),
):
    """Behaviour cloning on recorded demos; evaluates in the env as it goes."""
    from vla_gym.training.bc import BCConfig, train_bc
    from vla_gym.training.demos import Demos

    if landmark_map and grounding <= 0:
        raise typer.BadParameter("--landmark-map trains its map with the grounding loss; set "
                                 "--grounding to a weight > 0 (e.g. 1.0)",
                                 param_hint="--landmark-map")
    if target_geometry and grounding <= 0:
        raise typer.BadParameter("--target-geometry lifts target maps that the grounding loss "
                                 "trains; set --grounding to a weight > 0 (e.g. 1.0)",
                                 param_hint="--target-geometry")
    if relational_grounding and not grounding_scenes:
        raise typer.BadParameter("--relational-grounding adds to the grounding scenes; give "
                                 "--grounding-scenes N", param_hint="--relational-grounding")
    if grounding_scenes and grounding <= 0:
        raise typer.BadParameter("--grounding-scenes feeds the grounding loss; set --grounding "
                                 "to a weight > 0 (e.g. 1.0)", param_hint="--grounding-scenes")
    if grounding_warmup_steps and grounding <= 0:
        raise typer.BadParameter("--grounding-warmup-steps trains the grounding losses; set "
                                 "--grounding to a weight > 0 (e.g. 1.0)",
                                 param_hint="--grounding-warmup-steps")
    config = BCConfig(preset=preset, steps=steps, batch_size=batch_size, lr=lr,
                      eval_every=eval_every, eval_episodes=eval_episodes,
                      grounding_weight=grounding, contrastive_weight=contrastive, seed=seed,
                      time_budget_s=time_budget, state_velocities=state_velocities,
                      dagger_episodes=dagger_episodes, dagger_rounds=dagger_rounds,
                      precision=precision, target_geometry=target_geometry,
                      refit_head_steps=refit_head_steps,
                      grounding_warmup_steps=grounding_warmup_steps,
                      policy_changes=_bc_policy_changes(binary_gripper, landmark_map,
                                                        relation_layers))
    demos = Demos.from_dataset(dataset)
    if grounding_scenes:
        demos = demos.with_grounding_scenes(grounding_scenes, seed=seed,
                                            relational=relational_grounding)
    if grounding_warmup_steps and demos.grounding_frames is None:
        raise typer.BadParameter("--grounding-warmup-steps trains on grounding frames, which "
                                 f"{dataset} lacks; add --grounding-scenes N",
                                 param_hint="--grounding-warmup-steps")
    try:
        result = train_bc(demos, out, config, resume=resume, progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        console.print(f"interrupted; latest checkpoint in {out / 'checkpoints' / 'latest'}")
        raise typer.Exit(code=130) from None
    last = result.evaluations[-1] if result.evaluations else {}
    console.print(f"trained {result.steps} steps in {result.train_seconds:.0f} s, final loss "
                  f"{result.final_loss:.4f}, success {last.get('success_rate', float('nan')):.1%}"
                  f"; policy in {result.policy_dir}")


@train_app.command("map-planner")
def train_map_planner_command(
    out: Path = typer.Option(..., "--out", help="Run directory (policy/, metrics.json)."),
    env: str = typer.Option("vla_gym/NavGoTo-v0", "--env", help="A navigation env id."),
    demos: int = typer.Option(200, "--demos", min=1, help="Expert episodes to record."),
    grounding_scenes: int = typer.Option(
        800, "--grounding-scenes", min=0,
        help="Further scenes' first frames, instructed to a random landmark: perception only."),
    time_budget: float = typer.Option(860.0, "--time-budget", min=1,
                                      help="Seconds of training, both stages."),
    head_seconds: float = typer.Option(
        70.0, "--head-seconds", min=0, help="Of the budget, kept for the controller stage."),
    head_steps: int = typer.Option(5000, "--head-steps", min=1,
                                   help="Optimiser steps of the controller."),
    head_features: str = typer.Option(
        "true", "--head-features",
        help="The controller is cloned on: true (the simulator's map, pose and target for "
             "the demo frames) | perceived (what the trained perception makes of them)."),
    seed: int = typer.Option(0, "--seed"),
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here."),
):
    """Navigation: record expert demos with the overhead camera and train the map-and-plan
    policy (learned maps, the env's grid planner, a cloned controller)."""
    from gymnasium.error import Error as GymError

    from vla_gym.training.map_planner import MapDemos, MapPlannerTraining, train_map_planner

    try:
        settings = MapPlannerTraining(time_budget=time_budget, head_seconds=head_seconds,
                                      head_steps=head_steps, head_features=head_features,
                                      seed=seed)
        if time_budget <= head_seconds:  # train_map_planner refuses it too; say so before
            # minutes of recording, in the options' own names
            raise ValueError(f"--time-budget ({time_budget:g} s) must exceed --head-seconds "
                             f"({head_seconds:g} s)")
        recorded = MapDemos.from_expert(env, demos, grounding_scenes=grounding_scenes)
    except (ValueError, GymError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None
    policy, metrics = train_map_planner(recorded, settings, log=console.print)
    policy_dir = policy.save_pretrained(out / "policy")
    metrics = {"env_id": env, "demos": demos, "grounding_scenes": grounding_scenes, **metrics}
    write_json(out / "metrics.json", metrics)
    console.print(f"trained {metrics['perception_steps']} perception steps and the controller "
                  f"in {metrics['train_seconds']:.0f} s; policy in {policy_dir}")
    _write_json(json_path, metrics)


REWARD_INPUTS_HELP = ("What the reward model reads: all (image + instruction + state) | state "
                      "(the robot's state alone, an ablation).")


@train_app.command("reward")
def train_reward_command(
    queries: list[Path] = typer.Option(..., "--queries", help="Query set directory (repeatable)."),
    db: Path = typer.Option(..., "--db", help="Label database (labels.sqlite) of the queries."),
    out: Path = typer.Option(..., "--out", help="Run directory (reward_model/, metrics.json)."),
    env: str | None = typer.Option(None, "--env", help="Refuse query sets of any other env."),
    members: int = typer.Option(3, "--members", min=1, help="Ensemble size."),
    steps: int = typer.Option(300, "--steps", min=1, help="Optimiser steps per member."),
    inputs: str = typer.Option("all", "--inputs", help=REWARD_INPUTS_HELP),
    seed: int = typer.Option(0, "--seed"),
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here."),
):
    """Bradley-Terry reward model (ensemble) on labelled queries; reports held-out accuracy."""
    from vla_gym.training.query_files import QueryFileError
    from vla_gym.training.reward_model import RewardModelConfig, train_reward_run

    try:
        config = RewardModelConfig(members=members, steps=steps, inputs=inputs, seed=seed)
        metrics = train_reward_run([(q, db) for q in queries], out, config, env_id=env,
                                   log=console.print)
    except (QueryFileError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None
    console.print(f"{metrics['pairs']} labelled pairs: held-out accuracy "
                  f"{metrics['held_out_accuracy']:.1%} over {metrics['held_out_pairs']}; reward "
                  f"model in {out / 'reward_model'}")
    _write_json(json_path, metrics)


@train_app.command("rlhf")
def train_rlhf_command(
    bc: Path = typer.Option(..., "--bc", help="BC run or checkpoint directory to start from."),
    env: str = typer.Option(..., "--env", help="Env id."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    labels: int = typer.Option(1000, "--labels", min=0, help="Oracle labels in all."),
    oracle_noise: float = typer.Option(0.0, "--oracle-noise", help="Oracle error rate."),
    algo: str = typer.Option("ppo", "--algo",
                             help="ppo | sac | rft (reward-ranked fine-tuning)"),
    rft_explore: int = typer.Option(
        0, "--rft-explore", min=0,
        help="rft: per scene, also try the policy steered at each of its N strongest target "
             "candidates (needs --target-geometry BC)."),
    rft_noise_correlation: float = typer.Option(
        0.0, "--rft-noise-correlation", min=0.0, max=0.999,
        help="rft: step-to-step correlation of the exploration noise (0 = white)."),
    steps: int = typer.Option(40_000, "--steps", min=0, help="RL env steps in all."),
    iterations: int = typer.Option(4, "--iterations", min=1),
    selection: str = typer.Option("disagreement", "--selection", help="disagreement | random"),
    true_reward: bool = typer.Option(False, "--true-reward",
                                     help="RL on the env's reward, no labels (upper anchor)."),
    reward_inputs: str = typer.Option("all", "--reward-inputs", help=REWARD_INPUTS_HELP),
    lr: float | None = typer.Option(None, "--lr", min=0.0,
                                    help="RL learning rate (default: RLConfig's)."),
    eval_episodes: int = typer.Option(50, "--eval-episodes", min=1),
    clips: bool = typer.Option(False, "--clips", help="Write an MP4 per queried segment."),
    queries: list[Path] | None = typer.Option(None, "--queries",
                                              help="Extra labelled query set (repeatable)."),
    db: Path | None = typer.Option(None, "--db", help="Label database of --queries."),
    seed: int = typer.Option(0, "--seed"),
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here."),
):
    """Rollouts -> queries -> oracle labels -> reward model -> RL from the BC policy, repeated."""
    import dataclasses

    from vla_gym.training.preferences import OracleConfig
    from vla_gym.training.query_files import QueryFileError
    from vla_gym.training.rlhf import RLConfig, RLHFConfig, run_rlhf

    if env not in vla_gym.ENV_TABLE:
        raise typer.BadParameter(f"unknown env {env!r}; valid: {list(vla_gym.ENV_TABLE)}")
    if queries and db is None:
        raise typer.BadParameter("--queries needs --db (the labels of those queries)")
    try:
        rl = dataclasses.replace(RLConfig(), algo=algo, seed=seed, rft_explore=rft_explore,
                                 rft_noise_correlation=rft_noise_correlation,
                                 **({} if lr is None else {"lr": lr}))
        reward = dataclasses.replace(RLHFConfig(env_id=env).reward, inputs=reward_inputs)
        config = RLHFConfig(env_id=env, labels=labels, iterations=iterations, rl_steps=steps,
                            selection=selection, true_reward=true_reward, clips=clips,
                            eval_episodes=eval_episodes, seed=seed,
                            oracle=OracleConfig(flip=oracle_noise, seed=seed), reward=reward,
                            rl=rl)
        metrics = run_rlhf(config, bc, out, [(q, db) for q in queries or []] if db else None,
                           log=console.print)
    except (QueryFileError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None
    final, before = metrics["final"]["eval"], metrics["bc_eval"]
    console.print(f"success {before['success_rate']:.1%} (BC) -> {final['success_rate']:.1%} "
                  f"with {metrics['final']['labels']} labels; policy in {out / 'policy'}")
    _write_json(json_path, metrics)


@app.command("eval")
def eval_command(
    policy: Path = typer.Option(..., "--policy", help="Checkpoint or training run directory."),
    env: str = typer.Option(..., "--env", help="Env id."),
    episodes: int = typer.Option(50, "--episodes", min=1),
    seed: int = typer.Option(100_000, "--seed"),
    split: str = typer.Option("train", "--split", help="Instruction split: train|test|all."),
    num_envs: int = typer.Option(2, "--num-envs", min=1),
    counterfactual: int = typer.Option(-1, "--counterfactual",
                                       help="Counterfactual episodes (-1: as many, 0: none)."),
    max_steps: int | None = typer.Option(
        None, "--max-steps", min=1, help="Cap episode length (default: the env id's own)."),
    video_dir: Path | None = typer.Option(None, "--video-dir", help="Success/failure clips."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here."),
):
    """Success (95% Wilson interval) per family, length, jerk, distance, counterfactual test."""
    from vla_gym.evaluation import evaluate

    if env not in vla_gym.ENV_TABLE:
        raise typer.BadParameter(f"unknown env {env!r}; valid: {list(vla_gym.ENV_TABLE)}")
    report = evaluate(policy, env, episodes=episodes, seed=seed, split=split,
                      num_envs=num_envs, video_dir=video_dir, progress=sys.stderr.isatty(),
                      counterfactual_episodes=None if counterfactual < 0 else counterfactual,
                      env_kwargs=None if max_steps is None else {"max_episode_steps": max_steps})
    lo, hi = report["success_ci95"]
    console.print(f"{env} split={split}: success {report['success_rate']:.1%} (95% CI "
                  f"{lo:.1%}-{hi:.1%}) over {episodes}, mean length {report['mean_length']:.1f},"
                  f" mean jerk {report['mean_jerk']:.3f}")
    for task, stats in report["per_task"].items():
        console.print(f"  {task}: {stats['success_rate']:.1%} over {stats['episodes']}")
    if "counterfactual" in report:
        console.print(f"  counterfactual: follows the new instruction in "
                      f"{report['counterfactual']['success_rate']:.1%}")
    _write_json(json_path, report)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where everything is written."),
    env: str = typer.Option("vla_gym/TabletopMultiTask-v0", "--env"),
    episodes: int = typer.Option(150, "--episodes", min=1, help="Expert demos to collect."),
    steps: int = typer.Option(5000, "--steps", min=1, help="BC training steps."),
    eval_episodes: int = typer.Option(60, "--eval-episodes", min=1),
):
    """The main job: collect expert demos, train BC (small preset), evaluate, write report.md."""
    from vla_gym.demo import DemoConfig, run_demo

    defaults = DemoConfig()
    config = DemoConfig(env_id=env, episodes=episodes, eval_episodes=eval_episodes,
                        bc=defaults.bc.__class__(**{**defaults.bc.__dict__, "steps": steps}))
    run_demo(out, config, progress=sys.stderr.isatty(), log=console.print)


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
        renderers, data = env.unwrapped.renderers, env.unwrapped.data
        start = time.perf_counter()
        for _ in range(frames):
            image = renderers.observe(data, "main")
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


def _register_commands() -> None:
    # Defined next to their layers; importing them pulls in typer and the standard library.
    from vla_gym.data.cli import collect
    from vla_gym.sim2real.cli import bridge, deploy
    from vla_gym.training.labelling.cli import label

    app.command()(collect)
    app.command()(bridge)
    app.command()(deploy)
    app.command()(label)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
