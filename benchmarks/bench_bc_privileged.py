"""How cloneable is the expert? BC of a small MLP from privileged low-dim input.

The MLP reads the robot's state (velocities left out, as the image policies do) and the
instructed target's true position (``info["target_pos"]``), and clones the expert's actions
from ``--demos`` recorded episodes (DART noise on 3 in 4, optionally gripper blips). No images:
what this reaches is the ceiling an image policy with perfect perception would face, so it
separates "the controller cannot be cloned from these demos" from "perception is not good
enough". ``--target-noise`` adds a fixed Gaussian error (m, per horizontal axis, drawn per
episode) to the target position at evaluation, as an imperfect perception would.

    python benchmarks/bench_bc_privileged.py --grip-blips 0 0.08 --target-noise 0 0.01 0.02
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from seeds import EVAL_SEED  # this folder is on sys.path

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.jsonfile import write_json
from vla_gym.rollout import wilson_interval
from vla_gym.training.demos import Demos
from vla_gym.types import state_indices_without_velocities


class PrivilegedClone:
    """Standardised (state, target position) -> standardised action, fitted with AdamW."""

    def __init__(self, demos: Demos, hidden: int, steps: int, batch: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.read = list(state_indices_without_velocities(demos.contract, demos.state_dim))
        if demos.target_pos is None:
            raise ValueError("privileged BC needs demos with target positions")
        x = self.inputs(demos.states, demos.target_pos)
        y = demos.actions.astype(np.float32)
        self.x_mean, self.x_std = x.mean(0), x.std(0) + 1e-6
        self.y_mean, self.y_std = y.mean(0), y.std(0) + 1e-6
        xs = torch.as_tensor((x - self.x_mean) / self.x_std)
        ys = torch.as_tensor((y - self.y_mean) / self.y_std)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, y.shape[1]))
        optimiser = torch.optim.AdamW(self.net.parameters(), lr=1e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        rng = np.random.default_rng(seed)
        self.final_loss = float("nan")
        for _ in range(steps):
            rows = torch.as_tensor(rng.integers(0, len(xs), batch))
            loss = (self.net(xs[rows]) - ys[rows]).pow(2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            self.final_loss = float(loss.item())

    def inputs(self, states: np.ndarray, target_pos: np.ndarray) -> np.ndarray:
        states = np.asarray(states, dtype=np.float32)
        return np.concatenate([states[..., self.read], np.asarray(target_pos, np.float32)],
                              axis=-1)

    def act(self, state: np.ndarray, target_pos: np.ndarray) -> np.ndarray:
        x = (self.inputs(state, target_pos) - self.x_mean) / self.x_std
        with torch.no_grad():
            y = self.net(torch.as_tensor(x, dtype=torch.float32)).numpy()
        return np.clip(y * self.y_std + self.y_mean, -1.0, 1.0).astype(np.float32)


def success_rate(clone: PrivilegedClone, env_id: str, episodes: int, target_noise: float,
                 seed: int) -> dict[str, Any]:
    """Closed-loop success over seeded unseen scenes, the target position off by a per-episode
    Gaussian error of std ``target_noise`` m on each horizontal axis."""
    env = gym.make(env_id, image_size=32)
    rng = np.random.default_rng(seed)
    successes = 0
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=EVAL_SEED + episode)
            error = np.r_[target_noise * rng.standard_normal(2), 0.0]
            done = succeeded = False
            while not done:
                action = clone.act(obs["state"], np.asarray(info["target_pos"]) + error)
                obs, _, terminated, truncated, info = env.step(action)
                succeeded = succeeded or bool(info["is_success"])
                done = terminated or truncated
            successes += succeeded
    finally:
        env.close()
    low, high = wilson_interval(successes, episodes)
    return {"target_noise_m": target_noise, "episodes": episodes,
            "success_rate": successes / episodes, "success_ci95": [low, high]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="vla_gym/TabletopPick-v0")
    parser.add_argument("--demos", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.3, help="DART noise on 3 in 4 demos")
    parser.add_argument("--grip-blips", type=float, nargs="+", default=[0.0, 0.08],
                        help="one run per per-step blip chance (tabletop)")
    parser.add_argument("--target-noise", type=float, nargs="+", default=[0.0, 0.01, 0.02])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--fits", type=int, default=2, help="MLPs fitted per setting (seeds)")
    parser.add_argument("--eval-episodes", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    for blips in args.grip_blips:
        started = time.perf_counter()
        demos = Demos.from_expert(args.env, args.demos, seed=0, noise=args.noise,
                                  grip_blips=blips, image_size=32)
        for fit in range(args.fits):
            clone = PrivilegedClone(demos, args.hidden, args.steps, args.batch_size, seed=fit)
            for noise in args.target_noise:
                result = success_rate(clone, args.env, args.eval_episodes, noise, seed=fit)
                runs.append({"grip_blips": blips, "fit_seed": fit, "transitions": len(demos),
                             "final_loss": clone.final_loss, **result})
                lo, hi = result["success_ci95"]
                print(f"blips {blips:g}, fit {fit}, target noise {noise * 100:g} cm: success "
                      f"{result['success_rate']:.1%} ({lo:.1%}-{hi:.1%})", flush=True)
        print(f"  ({time.perf_counter() - started:.0f} s for blips {blips:g})", flush=True)
    if args.json is not None:
        write_json(args.json, {"env_id": args.env, "demos": args.demos,
                                "runs": runs})


if __name__ == "__main__":
    main()
