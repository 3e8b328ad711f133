"""Why a Pick policy fails: each unseen episode sorted by what its gripper did.

    python benchmarks/pick_failure_modes.py --policy RUN/TabletopPick-v0/policy --episodes 150

Episode j starts from ``reset(seed=EVAL_SEED + j)``, the seeds ``bench_bc.py`` evaluates on, in
an env made with the policy's image size and cameras; ``--scenes validation`` starts from
``VALIDATION_SEED`` instead, scenes for judging changes to a policy without looking at the
bench's own. The
categories, first match wins: success; never closed (the gripper never got a closing command);
grasped another object; grasped the target but never lifted it (or lost it); closed on nothing.
For each, the median offset of the gripper from the target's centre when it first closed
(horizontal distance and height above) and the median count of closing commands. Each
episode's row in ``--json`` also has the instruction, the target's shape and the gripper's
opening at the end (a cube held jammed across its edges stays 5-5.6 cm open).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from seeds import EVAL_SEED, VALIDATION_SEED  # this folder is on sys.path

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.jsonfile import write_json
from vla_gym.rollout import policy_env_kwargs, wilson_interval
from vla_gym.types import ARM_STATE_FIELDS

ORDER = ("success", "never closed", "grasped another object",
         "grasped the target, not lifted", "closed on nothing")
OPENING = ARM_STATE_FIELDS.index("gripper_opening")


def run_episode(policy: Any, env: gym.Env, seed: int,
                observe: Callable[[dict[str, Any], np.ndarray], None] | None = None
                ) -> dict[str, Any]:
    """One episode from ``reset(seed=seed)``, sorted into ``ORDER``; ``observe(obs, action)``
    sees each step's observation and the policy's action before the env steps."""
    base = env.unwrapped
    obs, info = env.reset(seed=seed)
    policy.reset()
    grip = base.action_contract.grip_index
    target = base.episode.target.slot
    others = [o.slot for o in base.sim.layout.objects if o.slot != target]
    closes, first_close, closing = 0, None, False
    held_target = held_other = success = False
    done = False
    while not done:
        action = policy.act(obs)
        if observe is not None:
            observe(obs, action)
        if action[grip] > 0 and not closing:
            closes += 1
            if first_close is None:
                offset = base.sim.ee_pos() - info["target_pos"]
                first_close = {"xy_m": float(np.linalg.norm(offset[:2])), "z_m": float(offset[2])}
        closing = bool(action[grip] > 0)
        obs, _, terminated, truncated, info = env.step(action)
        held_target |= base.sim.is_grasping(target)
        held_other |= any(base.sim.is_grasping(slot) for slot in others)
        success |= bool(info["is_success"])
        done = terminated or truncated
    return {"seed": seed, "closes": closes, "first_close": first_close, "target": info["target"],
            "shape": base.episode.target.shape, "instruction": str(obs["instruction"]),
            "opening_at_end_cm": 100 * float(obs["state"][OPENING]),
            "mode": failure_mode(success, first_close is not None, held_other, held_target)}


def failure_mode(success: bool, closed: bool, held_other: bool, held_target: bool) -> str:
    """The episode's category in ``ORDER``, first match wins."""
    if success:
        return "success"
    if not closed:
        return "never closed"
    if held_other:
        return "grasped another object"
    return "grasped the target, not lifted" if held_target else "closed on nothing"


def summarise(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    wins = sum(e["mode"] == "success" for e in episodes)
    modes = {}
    for mode in ORDER:
        rows = [e for e in episodes if e["mode"] == mode]
        if not rows:
            continue
        closed = [e["first_close"] for e in rows if e["first_close"]]
        modes[mode] = {
            "episodes": len(rows),
            "median_close_xy_cm": (100 * statistics.median(c["xy_m"] for c in closed)
                                   if closed else None),
            "median_close_z_cm": (100 * statistics.median(c["z_m"] for c in closed)
                                  if closed else None),
            "median_closes": statistics.median(e["closes"] for e in rows)}
    return {"episodes": len(episodes), "success_rate": wins / len(episodes),
            "success_ci95": wilson_interval(wins, len(episodes)), "modes": modes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True, help="a saved policy directory")
    parser.add_argument("--episodes", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scenes", choices=("bench", "validation"), default="bench",
                        help="the bench's evaluation scenes, or validation scenes")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")

    from vla_gym.policies import VLAPolicy

    torch.set_num_threads(args.threads)
    policy = VLAPolicy.from_pretrained(args.policy).eval()
    env = gym.make("vla_gym/TabletopPick-v0", image_size=policy.config.vision.image_size,
                   **policy_env_kwargs(policy))
    first = EVAL_SEED if args.scenes == "bench" else VALIDATION_SEED
    episodes = [run_episode(policy, env, first + j) for j in range(args.episodes)]
    env.close()
    result = {"policy": str(args.policy), "scenes": args.scenes, **summarise(episodes),
              "per_episode": episodes}
    lo, hi = result["success_ci95"]
    print(f"success {result['success_rate']:.1%} ({lo:.1%}-{hi:.1%}) over {args.episodes}")
    for mode, row in result["modes"].items():
        where = ("" if row["median_close_xy_cm"] is None else
                 f"  first close {row['median_close_xy_cm']:.1f} cm off, "
                 f"{row['median_close_z_cm']:.1f} cm above the centre")
        print(f"  {mode:32s} {row['episodes']:4d}{where}, closes {row['median_closes']}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
