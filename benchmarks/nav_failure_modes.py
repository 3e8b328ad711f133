"""Why a map-and-plan NavGoTo policy fails: each unseen episode sorted by where it ended, with
what perception believed there against the simulator.

    python benchmarks/nav_failure_modes.py --policy RUN/policy --episodes 40 [--memory off]

Episode j starts from ``reset(seed=EVAL_SEED + j)``, the scenes ``bench_map_planner.py``
evaluates on (``--scenes validation``: seeds 200 000 on, for judging changes without looking
at the bench's own). Categories, first match wins: success; inside the success radius but not
facing the target; stopped short (ended within 1.2 m, outside the radius); far (ended farther).
Per episode: the target's error on the first frame, and on the last frame both as one frame
alone shows it and as the policy planned on it (its episode memory, when the policy keeps one);
the fused pose's position and heading errors at the end; the share of planning cells whose
occupancy the policy got wrong at the end. ``--memory off`` runs the same checkpoint with
``episode_memory`` off (one frame's maps, as before the memory).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from bench_map_planner import angle_deg  # this folder is on sys.path
from seeds import EVAL_SEED, VALIDATION_SEED

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.envs.navigation.task import SUCCESS_RADIUS
from vla_gym.jsonfile import write_json
from vla_gym.policies.map_planner import TOP_VIEW, MapPlannerPolicy, Perceived, route_features
from vla_gym.rollout import wilson_interval

ORDER = ("success", "inside the radius, not facing", "stopped short", "far")
SHORT = 1.2  # m: an episode that ends between the success radius and this stopped short


ORACLES = ("none", "occupancy", "pose", "target")


def with_oracle(perceived: Perceived, env: gym.Env, oracle: str) -> Perceived:
    """``perceived`` with one part replaced by the simulator's truth (``oracle``)."""
    base = env.unwrapped
    truth = {"occupancy": {"blocked": base.grid.blocked},
             "pose": {"pose": tuple(base.sim.robot.world_pose(base.data))},
             "target": {"target": tuple(base.episode.target.xy)}}.get(oracle, {})
    parts = {"blocked": perceived.blocked, "pose": perceived.pose, "target": perceived.target}
    return Perceived(**{**parts, **truth})


def run_episode(policy: MapPlannerPolicy, env: gym.Env, seed: int,
                oracle: str = "none") -> dict[str, Any]:
    """One episode driven as ``policy.predict`` drives it, keeping what it planned on."""
    base = env.unwrapped
    obs, info = env.reset(seed=seed)
    policy.reset()
    tx, ty = base.episode.target.xy

    def target_error(xy: tuple[float, float]) -> float:
        return math.hypot(xy[0] - tx, xy[1] - ty)

    first = policy.perceive(obs[TOP_VIEW][None], [obs["instruction"]])[0]
    done, steps, success = False, 0, False
    while not done:
        states = np.asarray(obs["state"], np.float32)[None]
        planned = policy.track(obs[TOP_VIEW][None], [obs["instruction"]], states,
                               policy.episode_memories(states))[0]
        planned = with_oracle(planned, env, oracle)
        action = policy.control(route_features(planned, states[0], policy.config)[None])[0]
        obs, _, terminated, truncated, info = env.step(action)
        success |= bool(info["is_success"])
        steps += 1
        done = terminated or truncated
    last = policy.perceive(obs[TOP_VIEW][None], [obs["instruction"]])[0]
    x, y, yaw = base.sim.robot.world_pose(base.data)
    distance = target_error((x, y))
    bearing = angle_deg(math.atan2(ty - y, tx - x) - yaw)
    if success:
        category = ORDER[0]
    elif distance <= SUCCESS_RADIUS:
        category = ORDER[1]
    else:
        category = ORDER[2] if distance <= SHORT else ORDER[3]
    return {"seed": seed, "category": category, "steps": steps, "final_distance_m": distance,
            "final_bearing_deg": bearing, "first_target_error_m": target_error(first.target),
            "last_target_error_m": {"one_frame": target_error(last.target),
                                    "planned": target_error(planned.target)},
            "last_pose_error": {"position_m": math.hypot(planned.pose[0] - x,
                                                         planned.pose[1] - y),
                                "heading_deg": angle_deg(planned.pose[2] - yaw)},
            "last_cells_wrong": float(np.mean(planned.blocked != base.grid.blocked))}


def summarise(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    out: dict[str, Any] = {}
    for name in ORDER:
        group = [e for e in episodes if e["category"] == name]
        out[name] = {
            "episodes": len(group),
            "first_target_error_median_m": median([e["first_target_error_m"] for e in group]),
            "last_target_error_median_m": {
                k: median([e["last_target_error_m"][k] for e in group])
                for k in ("one_frame", "planned")},
            "final_distance_median_m": median([e["final_distance_m"] for e in group]),
            "last_pose_position_error_median_m": median(
                [e["last_pose_error"]["position_m"] for e in group]),
            "last_cells_wrong_mean": (float(np.mean([e["last_cells_wrong"] for e in group]))
                                      if group else None)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True, help="a saved MapPlannerPolicy")
    parser.add_argument("--env", default="vla_gym/NavGoTo-v0")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--scenes", choices=("bench", "validation"), default="bench")
    parser.add_argument("--memory", choices=("checkpoint", "on", "off"), default="checkpoint",
                        help="episode_memory as the checkpoint says, or forced on/off")
    parser.add_argument("--oracle", choices=ORACLES, default="none",
                        help="the simulator's occupancy, pose or target in place of perception")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    policy = MapPlannerPolicy.from_pretrained(args.policy)
    if args.memory != "checkpoint":
        policy.config.episode_memory = args.memory == "on"
    first_seed = EVAL_SEED if args.scenes == "bench" else VALIDATION_SEED
    env = gym.make(args.env, cameras=policy.config.cameras)
    try:
        episodes = []
        for j in range(args.episodes):
            episodes.append(run_episode(policy, env, first_seed + j, args.oracle))
            e = episodes[-1]
            print(f"seed {e['seed']}: {e['category']}, {e['final_distance_m']:.2f} m, target "
                  f"error first {e['first_target_error_m']:.2f} m, last one frame "
                  f"{e['last_target_error_m']['one_frame']:.2f} m / planned "
                  f"{e['last_target_error_m']['planned']:.2f} m", flush=True)
    finally:
        env.close()
    successes = sum(e["category"] == "success" for e in episodes)
    lo, hi = wilson_interval(successes, len(episodes))
    summary = summarise(episodes)
    print(f"success {successes}/{len(episodes)} ({lo:.1%}-{hi:.1%}); episode_memory "
          f"{policy.config.episode_memory}, oracle {args.oracle}")
    for name, row in summary.items():
        print(f"  {name}: {row}")
    if args.json is not None:
        write_json(args.json, {"policy": str(args.policy), "scenes": args.scenes,
                               "episode_memory": policy.config.episode_memory,
                               "oracle": args.oracle,
                               "summary": summary, "episodes": episodes})


if __name__ == "__main__":
    main()
