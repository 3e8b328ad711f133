"""One Pick policy's perception, its head refitted on demos of different demonstrators: which
demos a head can follow, with perception held fixed.

    python benchmarks/pick_refit_demonstrators.py --policy RUN/TabletopPick-v0/policy \
        --refit-seeds 0 1 2 --episodes 100 --json refit.json

For each expert setting (``square_cubes`` on and off, see ``TabletopExpert``) the script
records the same demo seeds as ``bench_bc.py`` (DART noise on 3 in 4 demos, gripper blips),
refits a copy of the policy's head on them (``refit_head``, once per refit seed), and sorts
each refitted policy's episodes as ``pick_failure_modes.py`` does, on the validation scenes
by default.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from pick_failure_modes import run_episode, summarise  # this folder is on sys.path
from seeds import EVAL_SEED, VALIDATION_SEED

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.jsonfile import write_json
from vla_gym.rollout import policy_env_kwargs
from vla_gym.training.demos import Demos
from vla_gym.training.refit import refit_head

PICK = "vla_gym/TabletopPick-v0"
DEMONSTRATORS = {"squares to cubes": True, "closes across cubes": False}


def judge(policy: Any, env_kwargs: dict[str, Any], first_seed: int, episodes: int
          ) -> dict[str, Any]:
    env = gym.make(PICK, **env_kwargs)
    try:
        result = summarise([run_episode(policy, env, first_seed + j) for j in range(episodes)])
    finally:
        env.close()
    return {"success_rate": result["success_rate"], "success_ci95": result["success_ci95"],
            "modes": {mode: row["episodes"] for mode, row in result["modes"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True, help="a saved policy directory")
    parser.add_argument("--demos", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--grip-blips", type=float, default=0.08)
    parser.add_argument("--refit-steps", type=int, default=5000)
    parser.add_argument("--refit-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--scenes", choices=("bench", "validation"), default="validation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.demos < 1 or args.episodes < 1 or args.refit_steps < 1:
        parser.error("--demos, --episodes and --refit-steps must be at least 1")

    from vla_gym.policies import VLAPolicy

    torch.set_num_threads(args.threads)
    trained = VLAPolicy.from_pretrained(args.policy).eval()
    env_kwargs = {"image_size": trained.config.vision.image_size,
                  **policy_env_kwargs(trained)}
    first = EVAL_SEED if args.scenes == "bench" else VALIDATION_SEED
    rows = []
    for name, square in DEMONSTRATORS.items():
        started = time.perf_counter()
        demos = Demos.from_expert(PICK, args.demos, seed=0, noise=args.noise,
                                  grip_blips=args.grip_blips,
                                  expert_options={"square_cubes": square}, **env_kwargs)
        record_s = time.perf_counter() - started
        for refit_seed in args.refit_seeds:
            policy = copy.deepcopy(trained)
            fit = refit_head(policy, demos, args.refit_steps, seed=refit_seed)
            row = {"demonstrator": name, "square_cubes": square, "refit_seed": refit_seed,
                   "record_seconds": round(record_s, 1), "refit_seconds": round(fit.seconds, 1),
                   "refit_final_loss": fit.final_loss,
                   **judge(policy, env_kwargs, first, args.episodes)}
            rows.append(row)
            modes = ", ".join(f"{k} {v}" for k, v in row["modes"].items() if k != "success")
            print(f"{name:20s} refit seed {refit_seed}: {row['success_rate']:.1%}  ({modes})",
                  flush=True)
    if args.json:
        write_json(args.json, {"policy": str(args.policy), "scenes": args.scenes,
                               "episodes": args.episodes, "runs": rows})


if __name__ == "__main__":
    main()
