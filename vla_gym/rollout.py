"""Seeded rollouts over (vector) envs with honest statistics and optional video.

Episode ``j`` always starts from ``reset(seed=seed + j)`` whatever the number of envs, so the
figures do not depend on how the work is split. Success is reported with a 95% Wilson
interval, which stays meaningful at small episode counts and at 0% or 100%.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from vla_gym.jsonfile import write_json
from vla_gym.vector import make_vec
from vla_gym.video import VideoRecorder

# policy(obs_batch, info_batch) -> actions (num_envs, action_dim)
BatchPolicy = Callable[[dict[str, Any], dict[str, Any]], np.ndarray]


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if trials <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return (low, high)


@dataclass
class RolloutSummary:
    env_id: str
    policy: str
    episodes: int
    seed: int
    num_envs: int
    success_rate: float
    success_ci95: tuple[float, float]
    mean_return: float
    mean_length: float
    steps_per_second: float
    wall_seconds: float
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    episode_success: list[bool] = field(default_factory=list)
    # mean |a_t - 2 a_{t-1} + a_{t-2}| per step: lower is smoother
    mean_jerk: float = float("nan")
    # distance (m) to the target when the episode ended, where the env reports one (nav)
    mean_final_distance: float | None = None
    episodes_detail: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, path: str | Path) -> None:
        write_json(path, asdict(self))


def random_policy(action_space: gym.Space, seed: int) -> BatchPolicy:
    """Uniform actions from a generator seeded by ``seed`` (reproducible)."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low, action_space.high

    def act(obs: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        return rng.uniform(low, high).astype(np.float32)

    return act


def expert_policy(action_space: gym.Space, seed: int) -> BatchPolicy:
    """Reads the actions the in-env experts (``ExpertActions`` wrapper) put in ``info``."""

    def act(obs: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
        return np.asarray(info["expert_action"], dtype=np.float32)

    return act


def mean_jerk(actions: list[np.ndarray] | np.ndarray) -> float:
    """Mean norm of the actions' second difference per step (NaN under three steps)."""
    a = np.asarray(actions, dtype=np.float64)
    if len(a) < 3:
        return float("nan")
    return float(np.linalg.norm(a[2:] - 2 * a[1:-1] + a[:-2], axis=-1).mean())


def _per_task(tasks: list[str], successes: list[bool]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for task, ok in zip(tasks, successes):
        groups[task].append(ok)
    out = {}
    for task, oks in sorted(groups.items()):
        lo, hi = wilson_interval(sum(oks), len(oks))
        out[task] = {"episodes": len(oks), "success_rate": sum(oks) / len(oks),
                     "ci95_low": lo, "ci95_high": hi}
    return out


def info_row(info: dict[str, Any], key: str, index: int, default: Any = None) -> Any:
    if key in info and info.get(f"_{key}", np.ones(index + 1, bool))[index]:
        return info[key][index]
    return default


def merge_info(old: dict[str, Any], new: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    """Rows of ``new`` where ``mask`` (the sub-envs just reset), rows of ``old`` elsewhere.

    A masked reset returns info only for the reset sub-envs; the others must keep what their
    last step said (e.g. the expert's next action).
    """
    merged = dict(old)
    for key, value in new.items():
        if key.startswith("_") or key not in old or f"_{key}" not in new:
            merged.setdefault(key, value)
            continue
        rows = np.asarray(new[f"_{key}"]) & mask
        combined = np.array(old[key], copy=True)
        combined[rows] = np.asarray(value)[rows]
        merged[key] = combined
    return merged


class _EpisodeBook:
    """Which episode each sub-env runs and what finished episodes achieved."""

    def __init__(self, episodes: int, num_envs: int, seed: int) -> None:
        self.episodes, self.seed = episodes, seed
        self.next_episode = 0
        self.running: list[int | None] = [None] * num_envs
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=int)
        self.actions: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self.results: dict[int, dict[str, Any]] = {}

    def assign(self, index: int) -> int:
        """Seed for the next episode on sub-env ``index`` (idle envs get unused seeds)."""
        self.returns[index], self.lengths[index] = 0.0, 0
        self.actions[index] = []
        if self.next_episode < self.episodes:
            self.running[index] = self.next_episode
            self.next_episode += 1
            return self.seed + self.running[index]
        self.running[index] = None
        return self.seed + self.episodes + 1_000_000 + index

    def record(self, actions: np.ndarray) -> None:
        for index, action in enumerate(np.asarray(actions, dtype=np.float64)):
            self.actions[index].append(action.reshape(-1))

    def finish(self, index: int, success: bool, task: str, distance: float | None) -> None:
        episode = self.running[index]
        if episode is not None:
            self.results[episode] = {
                "seed": self.seed + episode, "success": success,
                "return": float(self.returns[index]), "length": int(self.lengths[index]),
                "task": task, "jerk": mean_jerk(self.actions[index]),
                "final_distance": None if distance is None else float(distance)}

    @property
    def done(self) -> bool:
        return len(self.results) >= self.episodes


def run_rollouts(
    env_id: str,
    policy: str | BatchPolicy = "random",
    *,
    episodes: int = 10,
    seed: int = 0,
    num_envs: int = 1,
    vectorization_mode: str = "sync",
    video_path: str | Path | None = None,
    video_episodes: int = 3,
    progress: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    wrappers: list[Callable[[gym.Env], gym.Wrapper]] | None = None,
    recorder: Any = None,
) -> RolloutSummary:
    """Run ``episodes`` seeded episodes of ``env_id`` and summarise them.

    ``wrappers`` wrap each sub-env (inside its worker); ``recorder`` (``add(frame, text)``,
    ``episode_end(success)``, ``close()``) receives frames of sub-env 0's episodes instead of
    the single MP4 at ``video_path``.
    """
    from vla_gym.experts import ExpertActions

    if episodes < 1 or num_envs < 1:
        raise ValueError(f"episodes and num_envs must be >= 1, got {episodes}, {num_envs}")
    kwargs = dict(env_kwargs or {})
    name = str(policy) if isinstance(policy, (str, Path)) else getattr(policy, "__name__",
                                                                         "custom")
    if isinstance(policy, (str, Path)) and Path(policy).is_dir():
        policy = _load_checkpoint(policy)
    kwargs.update({k: v for k, v in policy_env_kwargs(policy).items() if k not in kwargs})
    if recorder is None and video_path is not None:
        recorder = VideoRecorder(video_path)
    if recorder is not None:
        kwargs["render_mode"] = "rgb_array"
    chain = list(wrappers or []) + ([ExpertActions] if policy == "expert" else [])
    vec = make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode,
                   vector_kwargs={"autoreset_mode": AutoresetMode.DISABLED},
                   wrappers=chain or None, **kwargs)
    try:
        act = _resolve_policy(policy, vec, seed)
        summary = _loop(vec, act, env_id, episodes, seed, recorder, video_episodes, progress)
    finally:
        vec.close()
    summary.policy = name
    return summary


def _load_checkpoint(path: str | Path) -> BatchPolicy:
    from vla_gym.policies import load_batch_policy

    return load_batch_policy(path)


def policy_env_kwargs(policy: Any) -> dict[str, Any]:
    """Env kwargs a policy needs: the cameras of every image view it reads (a VLAPolicy, or
    an adapter holding one as ``.policy``); {} for anything else."""
    config = getattr(getattr(policy, "policy", policy), "config", None)
    if not getattr(config, "extra_views", ()):
        return {}
    return {"cameras": config.cameras}


def _resolve_policy(policy: str | BatchPolicy, vec: gym.vector.VectorEnv, seed: int):
    if callable(policy):
        return policy
    makers = {"random": random_policy, "expert": expert_policy}
    if policy in makers:
        return makers[policy](vec.action_space, seed)
    raise ValueError(f"policy must be one of {tuple(makers)}, a checkpoint directory or a "
                     f"callable, got {policy!r}")


def _loop(vec, act, env_id, episodes, seed, video, video_episodes, progress_on):
    from rich.progress import Progress

    book = _EpisodeBook(episodes, vec.num_envs, seed)
    obs, info = vec.reset(seed=[book.assign(i) for i in range(vec.num_envs)])
    recorded = 0
    steps, start = 0, time.perf_counter()
    with Progress(disable=not progress_on, transient=True) as bar:
        task_bar = bar.add_task(f"rollout {env_id}", total=episodes)
        while not book.done:
            if video is not None and recorded < video_episodes and book.running[0] is not None:
                video.add(vec.call("render")[0], str(obs["instruction"][0]))
            actions = act(obs, info)
            book.record(actions)
            obs, reward, terminated, truncated, info = vec.step(actions)
            steps += vec.num_envs
            book.returns += reward
            book.lengths += 1
            ended = np.flatnonzero(np.logical_or(terminated, truncated))
            for i in ended:
                success = bool(info_row(info, "is_success", i, False))
                book.finish(i, success, str(info_row(info, "task", i, "")),
                            info_row(info, "distance", i, None))
                if i == 0 and video is not None and recorded < video_episodes:
                    video.episode_end(success)
                    recorded += 1
            if len(ended):
                bar.update(task_bar, completed=len(book.results))
                mask = np.zeros(vec.num_envs, bool)
                mask[ended] = True
                seeds = [book.assign(i) if mask[i] else None for i in range(vec.num_envs)]
                obs, reset_info = vec.reset(seed=seeds, options={"reset_mask": mask})
                info = merge_info(info, reset_info, mask)
    wall = time.perf_counter() - start
    if video is not None:
        video.close()
    return _summarise(book, env_id, episodes, seed, vec.num_envs, steps, wall)


def _summarise(book, env_id, episodes, seed, num_envs, steps, wall) -> RolloutSummary:
    ordered = [book.results[j] for j in range(episodes)]
    successes = [r["success"] for r in ordered]
    wins = sum(successes)
    jerks = [r["jerk"] for r in ordered if not math.isnan(r["jerk"])]
    distances = [r["final_distance"] for r in ordered if r["final_distance"] is not None]
    return RolloutSummary(
        env_id=env_id, policy="", episodes=episodes, seed=seed, num_envs=num_envs,
        success_rate=wins / episodes, success_ci95=wilson_interval(wins, episodes),
        mean_return=float(np.mean([r["return"] for r in ordered])),
        mean_length=float(np.mean([r["length"] for r in ordered])),
        steps_per_second=steps / wall if wall > 0 else float("nan"), wall_seconds=wall,
        per_task=_per_task([r["task"] for r in ordered], successes), episode_success=successes,
        mean_jerk=float(np.mean(jerks)) if jerks else float("nan"),
        mean_final_distance=float(np.mean(distances)) if distances else None,
        episodes_detail=ordered,
    )
