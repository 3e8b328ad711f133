"""How well a learned reward ranks whole episodes: what RL from preferences leans on.

A reward model can order short segments well (held-out preference accuracy) and still rank
whole episodes no better than chance, and whole episodes are what RL's returns and
reward-ranked fine-tuning compare. This benchmark measures both, side by side, for each
reward-model input (``RewardModelConfig.inputs``: "all" = image + instruction + state through
the trunk, "state" = the state alone):

1. training data as the RLHF loop gathers it: the BC policy (``--bc``) rolled out on
   ``--train-scenes`` scenes at each of ``--noise`` levels, cut into 25-step segments,
   ``--labels`` random same-instruction pairs labelled by the seeded oracle;
2. held-out episodes: ``--test-scenes`` other scenes at the same noise levels, each episode
   kept whole (``terminate_on_success=False``, so every one lasts the time limit);
3. per model: held-out preference accuracy, segment return correlation, the Spearman
   correlation of each held-out episode's learned return with its true return, and the
   success rate of the episodes it ranks in its top ``--top`` fraction, beside the same
   for the true return (the best a ranking can do) and over all episodes (chance).

    python benchmarks/bench_reward_ranking.py --bc RUN --labels 1000 --json runs/bench/rank.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.evaluation import resolve_policy_dir
from vla_gym.jsonfile import write_json
from vla_gym.policies import BatchPolicyAdapter, VLAPolicy
from vla_gym.training.label_store import LEFT_PREFERENCE
from vla_gym.training.preferences import (
    Oracle,
    OracleConfig,
    Preferences,
    SegmentSet,
    Variant,
    collect_segments,
    random_pairs,
)
from vla_gym.training.reward_model import (
    INPUTS,
    ResizedSegments,
    RewardEnsemble,
    RewardModelConfig,
    train_reward_model,
)
from vla_gym.training.rlhf import RLHFConfig, rl_env_kwargs

SEGMENT = 25
TRAIN_SEED = 3_000_000  # clear of the RLHF loop's rollouts (1 000 000 on) and evaluation
TEST_SEED = 4_000_000


def rollouts(policy: VLAPolicy, env_id: str, seeds: np.ndarray, noise: list[float],
             length: int, noise_seed: int) -> SegmentSet:
    """Every seed rolled out at every noise level, cut into segments of ``length`` steps."""
    act = BatchPolicyAdapter(policy)
    variants = [Variant(f"noise{n:g}", act, n) for n in noise]
    kwargs = rl_env_kwargs(RLHFConfig(env_id=env_id), policy)
    segments, _ = collect_segments(env_id, variants, seeds, segment_length=length,
                                   env_kwargs=kwargs, noise_seed=noise_seed)
    return segments


def oracle_preferences(segments: SegmentSet, labels: int, seed: int) -> Preferences:
    """``labels`` random same-instruction pairs, answered by the seeded oracle."""
    rng = np.random.default_rng(seed)
    oracle = Oracle(OracleConfig(seed=seed))
    pairs = random_pairs(segments, labels, rng)
    probs = [LEFT_PREFERENCE[oracle.choose(oracle.value(segments, a), oracle.value(segments, b),
                                  segments.segment_length)] for a, b in pairs]
    left, right = (np.array(side) for side in zip(*pairs, strict=True))
    return Preferences(segments, left, right, np.array(probs, np.float32))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # ties share their mean rank
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def top_success(scores: np.ndarray, success: np.ndarray, fraction: float) -> float:
    """Success rate of the ``fraction`` of episodes that ``scores`` ranks highest."""
    keep = max(1, int(round(fraction * len(scores))))
    return float(success[np.argsort(-scores, kind="stable")[:keep]].mean())


def ranking_figures(model: RewardEnsemble, episodes: SegmentSet,
                    fraction: float) -> dict[str, Any]:
    data = ResizedSegments(episodes, model.config.image_size)
    learned = model.segment_returns(data, np.arange(len(episodes))).mean(0)
    success = episodes.successes.any(axis=1)
    return {"episode_spearman": spearman(learned, episodes.true_returns),
            "top_success": top_success(learned, success, fraction)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bc", type=Path, required=True, help="BC run or checkpoint")
    parser.add_argument("--env", default="vla_gym/TabletopPick-v0")
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--train-scenes", type=int, default=96)
    parser.add_argument("--test-scenes", type=int, default=48)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS)
    parser.add_argument("--reward", default="{}", help="RewardModelConfig changes as JSON")
    parser.add_argument("--top", type=float, default=0.3, help="fraction ranked highest")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    policy = VLAPolicy.from_pretrained(resolve_policy_dir(args.bc)).eval()
    limit = gym.spec(args.env).max_episode_steps
    started = time.perf_counter()
    train = rollouts(policy, args.env, TRAIN_SEED + np.arange(args.train_scenes), args.noise,
                     SEGMENT, args.seed)
    episodes = rollouts(policy, args.env, TEST_SEED + np.arange(args.test_scenes), args.noise,
                        limit, args.seed + 1)
    prefs = oracle_preferences(train, args.labels, args.seed)
    success = episodes.successes.any(axis=1)
    report: dict[str, Any] = {
        "env_id": args.env, "bc": str(args.bc), "labels": len(prefs),
        "train_segments": len(train), "test_episodes": len(episodes), "noise": args.noise,
        "top_fraction": args.top, "rollout_seconds": round(time.perf_counter() - started, 1),
        "episodes_success": float(success.mean()),
        "true_return_top_success": top_success(episodes.true_returns, success, args.top),
        "models": {}}
    print(f"{len(prefs)} labels on {len(train)} segments; {len(episodes)} held-out episodes, "
          f"{success.mean():.1%} successes; top {args.top:.0%} by true return: "
          f"{report['true_return_top_success']:.1%}", flush=True)
    changes = json.loads(args.reward)
    for inputs in args.inputs:
        config = dataclasses.replace(RewardModelConfig(frames_per_segment=10),
                                     **{**changes, "inputs": inputs, "seed": args.seed})
        result = train_reward_model(prefs, config)
        figures = {"held_out_accuracy": result.metrics["held_out_accuracy"],
                   "segment_correlation": result.metrics["true_return_correlation"],
                   "fit_seconds": round(result.metrics["seconds"], 1),
                   **ranking_figures(result.model, episodes, args.top)}
        report["models"][inputs] = figures
        print(f"inputs={inputs}: held-out accuracy {figures['held_out_accuracy']:.3f}, "
              f"segment r {figures['segment_correlation']:.2f}, episode Spearman "
              f"{figures['episode_spearman']:.2f}, top {args.top:.0%} succeed "
              f"{figures['top_success']:.1%}", flush=True)
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
