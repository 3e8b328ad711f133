"""Where a Pick policy's perception points, frame by frame: which object each view's lifted
target point is nearest to, on the first frame, over the approach and when the gripper first
closes.

    python benchmarks/pick_grounding_trace.py --policy RUN/TabletopPick-v0/policy --episodes 100

For a geometry-only policy (``--target-geometry --geometry-only-head``): the head reads each
view's target map lifted onto the table; this script lifts the same points and names the
object nearest to each. Episodes are sorted as in ``pick_failure_modes.py``; per category it
counts how often the main view names the target on the first frame, on every frame before
the first close, and at the first close, and the same for the wrist view at the first close.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from pick_failure_modes import ORDER, run_episode  # this folder is on sys.path
from seeds import EVAL_SEED, VALIDATION_SEED

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.jsonfile import write_json
from vla_gym.policies.geometry import EE_POS, UNIT_M
from vla_gym.policies.preprocessing import add_batch_dim
from vla_gym.rollout import policy_env_kwargs
from vla_gym.training.demos import RELATIONAL_PHRASE


def nearest(point: np.ndarray, objects: dict[str, np.ndarray]) -> str:
    return min(objects, key=lambda slot: float(np.linalg.norm(objects[slot][:2] - point[:2])))


def lifted_points(policy: Any, obs: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """Each calibrated view's lifted target point (x, y) in the world, from the geometry
    features the head reads (offset from the gripper in decimetres, then the peak)."""
    inputs = policy.preprocess(add_batch_dim(obs))
    out = policy.features(inputs)
    ee = inputs.state[0, list(EE_POS)].cpu().numpy()
    geometry = policy.trunk.geometry
    lifted = out.perception[0, -geometry.out_dim:].float().cpu().numpy()
    return tuple(ee[:2] + lifted[3 * i: 3 * i + 2] * UNIT_M for i in range(len(geometry.views)))


def trace_episode(policy: Any, env: gym.Env, seed: int) -> dict[str, Any]:
    """``pick_failure_modes.run_episode``'s row plus which object each view's lifted point
    names, frame by frame until the first close (perception runs again for those frames only:
    after the close the grasp, not the grounding, decides)."""
    base = env.unwrapped
    grip = base.action_contract.grip_index
    start: dict[str, np.ndarray] = {}
    main_names: list[str] = []
    at_close: list[str] = []

    def observe(obs: dict[str, Any], action: np.ndarray) -> None:
        if at_close:
            return
        if not start:  # the episode's first frame: where every object stands
            start.update({o.slot: base.sim.object_pos(o.slot).copy()
                          for o in base.sim.layout.objects})
        names = [nearest(p, start) for p in lifted_points(policy, obs)]
        main_names.append(names[0])
        if action[grip] > 0:
            at_close.extend(names)

    with torch.inference_mode():
        row = run_episode(policy, env, seed, observe)
    target = base.episode.target.slot
    return {**row, "relational": bool(RELATIONAL_PHRASE.search(row["instruction"])),
            "main_first": main_names[0] == target,
            "main_all_before_close": all(n == target for n in main_names),
            "main_share_before_close": float(np.mean([n == target for n in main_names])),
            "main_at_close": at_close[0] == target if at_close else None,
            "wrist_at_close": at_close[1] == target if len(at_close) > 1 else None}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for group, keep in (("all", lambda r: True), ("relational", lambda r: r["relational"]),
                        ("plain", lambda r: not r["relational"])):
        chosen = [r for r in rows if keep(r)]
        per_mode = {}
        for mode in ORDER:
            sel = [r for r in chosen if r["mode"] == mode]
            if not sel:
                continue
            count = Counter()
            for r in sel:
                for key in ("main_first", "main_all_before_close", "main_at_close",
                            "wrist_at_close"):
                    count[key] += bool(r[key])
            per_mode[mode] = {"episodes": len(sel), **count}
        table[group] = {"episodes": len(chosen), "modes": per_mode}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--scenes", choices=("bench", "validation"), default="validation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from vla_gym.policies import VLAPolicy

    torch.set_num_threads(args.threads)
    policy = VLAPolicy.from_pretrained(args.policy).eval()
    if policy.trunk.geometry is None:
        parser.error("the policy has no target geometry (train bc --target-geometry)")
    env = gym.make("vla_gym/TabletopPick-v0", image_size=policy.config.vision.image_size,
                   **policy_env_kwargs(policy))
    first = EVAL_SEED if args.scenes == "bench" else VALIDATION_SEED
    rows = [trace_episode(policy, env, first + j) for j in range(args.episodes)]
    env.close()
    table = summarise(rows)
    for group, entry in table.items():
        print(f"{group}: {entry['episodes']} episodes")
        for mode, row in entry["modes"].items():
            rest = ", ".join(f"{k} {v}" for k, v in row.items() if k != "episodes")
            print(f"  {mode:32s} {row['episodes']:4d}  {rest}")
    if args.json:
        write_json(args.json, {"policy": str(args.policy), "summary": table, "episodes": rows})


if __name__ == "__main__":
    main()
