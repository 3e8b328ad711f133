"""Honest, reproducible policy evaluation: what ``vla-gym eval`` reports.

* success with a 95% Wilson interval, per task family, on the requested instruction split;
* episode length, action smoothness (mean jerk) and, for navigation, the final distance;
* a counterfactual-instruction test: the same seeds and scenes, the instruction naming another
  object; the success rate there is how often the outcome follows the new instruction;
* clips of a few successes and failures.
Episode ``j`` starts from ``seed + j`` and the policy acts deterministically, so the same
command gives the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from vla_gym.rollout import BatchPolicy, run_rollouts
from vla_gym.video import VideoRecorder

COUNTERFACTUAL_OF = "counterfactual_of"


class CounterfactualTargets(gym.Wrapper):
    """Each seeded reset is redone with ``options={"target": another object}`` of the same
    scene; ``info["counterfactual_of"]`` keeps the original target. The choice of object
    depends on the seed only."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        original = info["target"]
        others = self.env.unwrapped.counterfactual_targets()
        order = np.random.default_rng(seed).permutation(len(others)) if others else []
        for index in order:
            try:
                obs, info = self.env.reset(seed=seed, options={**(options or {}),
                                                               "target": others[index]})
            except ValueError:  # that object cannot be the target here; try the next one
                continue
            break
        info[COUNTERFACTUAL_OF] = original
        return obs, info


class EpisodeClips:
    """Recorder keeping up to ``per_outcome`` episodes each of success and failure as MP4s."""

    def __init__(self, directory: str | Path, per_outcome: int = 2) -> None:
        self.directory = Path(directory)
        self.per_outcome = per_outcome
        self.saved: dict[str, list[str]] = {"success": [], "failure": []}
        self._frames: list[tuple[np.ndarray, str]] = []

    def add(self, frame: np.ndarray, text: str) -> None:
        self._frames.append((np.asarray(frame), text))

    def episode_end(self, success: bool) -> None:
        outcome = "success" if success else "failure"
        if len(self.saved[outcome]) < self.per_outcome and self._frames:
            path = self.directory / f"{outcome}_{len(self.saved[outcome])}.mp4"
            video = VideoRecorder(path)
            for frame, text in self._frames:
                video.add(frame, text)
            video.close()
            self.saved[outcome].append(str(path))
        self._frames = []

    def close(self) -> None:
        self._frames = []


def resolve_policy_dir(path: str | Path) -> Path:
    """A checkpoint directory: ``path`` itself, or a training run's ``policy/`` inside it."""
    path = Path(path)
    for candidate in (path, path / "policy"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"no policy checkpoint at {path} (looked for config.json there and "
                            "in its policy/ directory)")


def evaluate(
    policy: str | Path | BatchPolicy,
    env_id: str,
    *,
    episodes: int = 50,
    seed: int = 100_000,
    split: str = "train",
    num_envs: int = 2,
    counterfactual_episodes: int | None = None,
    video_dir: str | Path | None = None,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Every figure of the module docstring, as a JSON-ready dict."""
    act = _load(policy)
    kwargs = {**dict(env_kwargs or {}), "instruction_split": split}
    clips = EpisodeClips(video_dir) if video_dir is not None else None
    main = run_rollouts(env_id, act, episodes=episodes, seed=seed, num_envs=num_envs,
                        env_kwargs=kwargs, recorder=clips, video_episodes=min(episodes, 10),
                        progress=progress)
    report: dict[str, Any] = {
        "env_id": env_id, "policy": str(policy) if not callable(policy) else "callable",
        "split": split, "seed": seed, **_figures(main),
    }
    if clips is not None:
        report["videos"] = clips.saved
    count = episodes if counterfactual_episodes is None else counterfactual_episodes
    if count > 0:
        counter = run_rollouts(env_id, act, episodes=count, seed=seed, num_envs=num_envs,
                               env_kwargs=kwargs, wrappers=[CounterfactualTargets],
                               progress=progress)
        report["counterfactual"] = _figures(counter)
    return report


def _load(policy: str | Path | BatchPolicy) -> BatchPolicy:
    if callable(policy):
        return policy
    from vla_gym.policies import load_batch_policy

    return load_batch_policy(resolve_policy_dir(policy))


def _figures(summary: Any) -> dict[str, Any]:
    data = asdict(summary)
    keep = ("episodes", "success_rate", "success_ci95", "per_task", "mean_return",
            "mean_length", "mean_jerk", "mean_final_distance", "steps_per_second",
            "episode_success")
    out = {k: data[k] for k in keep}
    out["success_ci95"] = list(out["success_ci95"])
    return out
