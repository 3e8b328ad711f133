"""NavGoTo with the map-and-plan policy: expert demos -> perception + cloned controller ->
success on unseen scenes, within the BC bar's budget (<= 200 demos, <= 15 min of training).

    python benchmarks/bench_map_planner.py --demos 200 --grounding-scenes 800 \
        --time-budget 860 --eval-episodes 60

Reports collection and training time, success with a 95% Wilson interval and the
counterfactual test (``vla_gym.evaluation.evaluate``, the function behind ``vla-gym eval``,
seeds 100 000 on), and how well perception does on the evaluation scenes (``perception_errors``:
the target found within 0.3 m, the base's position and heading errors, the occupancy cells it
gets wrong, and the heading once fused with odometry).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from seeds import EVAL_SEED  # this folder is on sys.path

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.envs.robots.diff_drive import wrap_angle
from vla_gym.evaluation import evaluate
from vla_gym.experts import make_expert
from vla_gym.jsonfile import write_json
from vla_gym.policies.map_planner import TOP_VIEW, MapPlannerPolicy
from vla_gym.training.map_planner import (
    HEAD_FEATURES,
    MapDemos,
    MapPlannerTraining,
    train_map_planner,
)


def perception_errors(policy: MapPlannerPolicy, env_id: str, episodes: int,
                      drive_steps: int = 40) -> dict:
    """Perception on the evaluation scenes against the simulator: on each first frame the
    target, base position and heading errors and the share of planning cells whose occupancy
    is wrong; then, after ``drive_steps`` expert steps, the heading error of one frame alone
    and of the pose fused with odometry over the drive (``OdometryAnchor``)."""
    env = gym.make(env_id, cameras=policy.config.cameras)
    base = env.unwrapped
    expert = make_expert(env)
    odometry = list(policy.config.state_odometry)
    rows: dict[str, list[float]] = {k: [] for k in (
        "target", "position", "heading", "cells", "heading_driven", "heading_fused")}
    try:
        for j in range(episodes):
            obs, _ = env.reset(seed=EVAL_SEED + j)
            expert.reset()
            anchor = policy.new_memory().anchor  # the policy's own weighting
            for step in range(drive_steps + 1):
                seen = policy.perceive(obs[TOP_VIEW][None], [obs["instruction"]])[0]
                fused = anchor.update(seen.pose, obs["state"][odometry])
                x, y, yaw = base.sim.robot.world_pose(base.data)
                if step == 0:
                    tx, ty = base.episode.target.xy
                    rows["target"].append(math.hypot(seen.target[0] - tx, seen.target[1] - ty))
                    rows["position"].append(math.hypot(seen.pose[0] - x, seen.pose[1] - y))
                    rows["heading"].append(angle_deg(seen.pose[2] - yaw))
                    rows["cells"].append(float(np.mean(seen.blocked != base.grid.blocked)))
                obs, _, terminated, truncated, _ = env.step(expert.act(obs))
                if terminated or truncated:
                    break
            rows["heading_driven"].append(angle_deg(seen.pose[2] - yaw))
            rows["heading_fused"].append(angle_deg(fused[2] - yaw))
    finally:
        env.close()
    return {"target_found": [bool(e < 0.3) for e in rows["target"]],
            "target_within_0.3m": float(np.mean(np.array(rows["target"]) < 0.3)),
            "target_error_median_m": float(np.median(rows["target"])),
            "base_position_error_median_m": float(np.median(rows["position"])),
            "heading_error_median_deg": float(np.median(rows["heading"])),
            "occupancy_cells_wrong": float(np.mean(rows["cells"])),
            f"after_{drive_steps}_steps_heading_error_median_deg": {
                "one_frame": float(np.median(rows["heading_driven"])),
                "fused_with_odometry": float(np.median(rows["heading_fused"]))}}


def angle_deg(radians: float) -> float:
    """The size of an angle difference, in degrees (0-180)."""
    return abs(math.degrees(wrap_angle(radians)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="vla_gym/NavGoTo-v0")
    parser.add_argument("--demos", type=int, default=200)
    parser.add_argument("--grounding-scenes", type=int, default=800)
    parser.add_argument("--noise", type=float, default=0.3, help="DART noise on 3 in 4 demos")
    parser.add_argument("--stop-distance", type=float, default=None,
                        help="m: where the expert stops short of the target (default 0.65)")
    parser.add_argument("--time-budget", type=float, default=860.0)
    parser.add_argument("--head-seconds", type=float, default=70.0)
    parser.add_argument("--head-features", choices=HEAD_FEATURES, default="true",
                        help="the controller cloned on the simulator's or perception's view")
    parser.add_argument("--eval-episodes", type=int, default=60)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_map_planner"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    options = {} if args.stop_distance is None else {"stop_distance": args.stop_distance}
    demos = MapDemos.from_expert(args.env, args.demos, noise=args.noise,
                                 grounding_scenes=args.grounding_scenes, expert_options=options)
    collect_s = time.perf_counter() - started
    print(f"collected {len(demos)} frames ({len(demos.demo_rows)} from {args.demos} demos) "
          f"in {collect_s:.0f} s", flush=True)
    settings = MapPlannerTraining(time_budget=args.time_budget,
                                  head_seconds=args.head_seconds,
                                  head_features=args.head_features, seed=args.seed)
    policy, training = train_map_planner(demos, settings, log=lambda m: print(m, flush=True))
    print(f"trained in {training['train_seconds']:.0f} s: {training['perception_steps']} "
          f"perception steps, head loss {training['head_loss']:.4f}", flush=True)
    policy.save_pretrained(args.out / "policy")
    perception = perception_errors(policy, args.env, args.eval_episodes)
    print("perception on the evaluation scenes:",
          {k: v for k, v in perception.items() if k != "target_found"}, flush=True)
    report = evaluate(policy, args.env, episodes=args.eval_episodes, seed=EVAL_SEED,
                      num_envs=args.num_envs, progress=True)
    lo, hi = report["success_ci95"]
    print(f"success {report['success_rate']:.1%} ({lo:.1%}-{hi:.1%}) over "
          f"{args.eval_episodes}, counterfactual {report['counterfactual']['success_rate']:.1%}, "
          f"mean final distance {report['mean_final_distance']:.2f} m", flush=True)
    found = np.array(perception["target_found"])
    success = np.array(report["episode_success"])
    print(f"success where the first frame's target was found within 0.3 m: "
          f"{success[found].sum()}/{found.sum()}; elsewhere {success[~found].sum()}/"
          f"{(~found).sum()}", flush=True)
    result = {"env_id": args.env, "demos": args.demos, "grounding_scenes": args.grounding_scenes,
              "stop_distance": args.stop_distance, "head_features": args.head_features,
              "seed": args.seed, "collect_seconds": collect_s, "training": training,
              "perception": perception, "evaluation": report}
    if args.json is not None:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
