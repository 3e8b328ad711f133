"""BC training steps per second, float32 against bfloat16 autocast, side by side in one run.

Two trainers on the same demos (the Pick bench's settings: wrist camera, grounding loss with
half a batch of grounding frames) take turns in blocks of ``--block-steps`` steps; the speed-up
is the median of the per-block ratios, so load from other processes hits both alike. Also
reported: each trainer's mean loss over its last blocks, to show bf16 still learns.

    python benchmarks/bench_bc_step.py --json runs/bench/bc_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.jsonfile import write_json
from vla_gym.training.bc import BCConfig, BCTrainer
from vla_gym.training.demos import Demos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="vla_gym/TabletopPick-v0")
    parser.add_argument("--demos", type=int, default=20)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--block-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    demos = Demos.from_expert(args.env, args.demos, seed=0, noise=0.3, other_targets=True,
                              image_size=args.image_size, cameras=("main", "wrist"))
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with TemporaryDirectory() as tmp:
        trainers = {name: BCTrainer(demos, Path(tmp) / name, BCConfig(
            preset=args.preset, grounding_weight=1.0, eval_every=0, precision=name))
            for name in rates}
        for trainer in trainers.values():  # warm-up: first steps allocate and pick kernels
            for _ in range(3):
                trainer.train_step()
        for _ in range(args.blocks):
            for name, trainer in trainers.items():
                started = time.perf_counter()
                block = [trainer.train_step()["loss"] for _ in range(args.block_steps)]
                rates[name].append(args.block_steps / (time.perf_counter() - started))
                losses[name].append(float(np.mean(block)))
    result = {
        "env": args.env, "preset": args.preset, "image_size": args.image_size,
        "threads": args.threads, "block_steps": args.block_steps,
        "cpu_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text()
        if Path("/proc/cpuinfo").exists() else None,
        "steps_per_second_median": {k: statistics.median(v) for k, v in rates.items()},
        "paired_speedup_bf16_over_fp32": statistics.median(
            b / f for f, b in zip(rates["fp32"], rates["bf16"])),
        "loss_last_blocks": {k: float(np.mean(v[-3:])) for k, v in losses.items()},
        "samples": rates,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
