"""Read demo datasets back as numpy, one episode at a time, and check them against an env.

``load_demos(path)`` opens what ``vla-gym collect --out PATH`` wrote (or any Minari dataset
directory written by it) without reading episodes; ``DemoDataset.episodes()`` and
``.transitions()`` then stream them, so a large dataset never sits in memory whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vla_gym.data.layout import (
    METADATA,
    PARAMS_KEY,
    CorruptDatasetError,
    IncompatibleDatasetError,
    episode_dirs,
    read_json,
    resolve_data_path,
)


@dataclass(frozen=True)
class DemoEpisode:
    """One episode: ``T`` actions, ``T + 1`` observations and per-frame infos."""

    index: int
    observations: dict[str, Any]  # arrays (T+1, ...); text keys: list of T+1 str
    actions: np.ndarray  # (T, action_dim) float32
    rewards: np.ndarray  # (T,)
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool
    infos: dict[str, np.ndarray]  # (T+1, ...): is_success, task, target, target_pos, ...
    metadata: dict[str, Any]  # seed, success, task, target, instruction, return, length

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def seed(self) -> int | None:
        return self.metadata.get("seed")

    @property
    def success(self) -> bool:
        return bool(self.metadata.get("success", self.infos["is_success"][-1]))

    @property
    def instruction(self) -> str:
        return str(self.metadata.get("instruction") or self.observations["instruction"][0])


@dataclass(frozen=True)
class Transition:
    """Step ``t`` of an episode: the observation, the expert's action and frame-t infos."""

    episode: int
    step: int
    observation: dict[str, Any]  # image uint8 (H, W, 3), instruction str, state float32
    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]  # target_pos (3,), target str, task str, is_success bool, ...


class DemoDataset:
    """A demo dataset on disk: env id and spaces up front, episodes streamed on demand."""

    def __init__(self, data_path: Path) -> None:
        from minari import MinariDataset

        self.path = data_path
        meta = read_json(data_path / METADATA)
        try:
            self.minari = MinariDataset(data_path)
        except Exception as exc:  # Minari raises ValueError/KeyError/AssertionError alike
            raise CorruptDatasetError(f"{data_path} is not a readable Minari dataset: "
                                      f"{type(exc).__name__}: {exc}") from None
        self.params: dict[str, Any] = meta.get(PARAMS_KEY) or {}
        spec = self.minari.env_spec
        self.env_spec = spec
        self.env_id: str | None = self.params.get("env_id") or (spec.id if spec else None)
        self.env_kwargs: dict[str, Any] = dict(self.params.get("env_kwargs") or {})
        self.observation_space: spaces.Dict = self.minari.observation_space
        self.action_space: spaces.Box = self.minari.action_space
        missing = sorted(set(range(self.minari.total_episodes)) - set(episode_dirs(data_path)))
        if missing:
            raise CorruptDatasetError(f"{data_path} lists {self.minari.total_episodes} episodes "
                                      f"but episode folders {missing[:10]} are missing")

    def __len__(self) -> int:
        return self.minari.total_episodes

    @property
    def total_steps(self) -> int:
        return self.minari.total_steps

    def make_env(self, **kwargs: Any) -> gym.Env:
        """The env that recorded the dataset (same id and kwargs), via Minari."""
        return self.minari.recover_environment(**kwargs)

    def episode(self, index: int) -> DemoEpisode:
        if not 0 <= index < len(self):
            raise IndexError(f"episode {index} out of range [0, {len(self)}) in {self.path}")
        try:
            raw = next(iter(self.minari.storage.get_episodes([index])))
            (metadata,) = self.minari.storage.get_episode_metadata([index])
        except Exception as exc:  # pyarrow / json / PIL errors all mean a damaged file
            raise CorruptDatasetError(f"cannot read episode {index} of {self.path}: "
                                      f"{type(exc).__name__}: {exc}") from None
        return DemoEpisode(
            index=index, observations=raw["observations"],
            actions=np.asarray(raw["actions"], dtype=np.float32),
            rewards=np.asarray(raw["rewards"]), terminations=np.asarray(raw["terminations"]),
            truncations=np.asarray(raw["truncations"]), infos=dict(raw["infos"] or {}),
            metadata=metadata,
        )

    def episode_metadata(self) -> list[dict[str, Any]]:
        """Every episode's metadata (seed, success, task, target, instruction, ...), cheaply."""
        return list(self.minari.storage.get_episode_metadata(range(len(self))))

    def episodes(self, indices: Iterable[int] | None = None,
                 only_success: bool = False) -> Iterator[DemoEpisode]:
        """Episodes one at a time (only one is in memory at once)."""
        if indices is None:
            indices = range(len(self))
        if only_success:
            meta = self.episode_metadata()
            indices = [i for i in indices if meta[i].get("success", True)]
        for index in indices:
            yield self.episode(int(index))

    def transitions(self, indices: Iterable[int] | None = None,
                    only_success: bool = False) -> Iterator[Transition]:
        """Every (observation, action) step of the chosen episodes, in order."""
        for ep in self.episodes(indices, only_success):
            for t in range(len(ep)):
                yield Transition(
                    episode=ep.index, step=t,
                    observation={k: _item(v[t]) for k, v in ep.observations.items()},
                    action=ep.actions[t], reward=float(ep.rewards[t]),
                    terminated=bool(ep.terminations[t]), truncated=bool(ep.truncations[t]),
                    info={k: _item(v[t]) for k, v in ep.infos.items()},
                )

    def __repr__(self) -> str:
        return (f"DemoDataset({str(self.path)!r}, env_id={self.env_id!r}, episodes={len(self)}, "
                f"steps={self.total_steps})")


def _item(value: Any) -> Any:
    """Numpy scalars -> Python (str, bool, float); arrays stay arrays."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_demos(path: str | Path) -> DemoDataset:
    """Open a demo dataset: a ``collect --out`` root, a dataset directory or its ``data/``.

    Raises ``DatasetNotFoundError`` (missing) or ``CorruptDatasetError`` (unreadable), both
    naming the path.
    """
    return DemoDataset(resolve_data_path(path))


def check_compatible(dataset: DemoDataset | Any, env: gym.Env | str) -> None:
    """Raise ``IncompatibleDatasetError`` listing every difference between the dataset's
    observation/action spaces and ``env``'s (an env or an env id, made with its defaults)."""
    if isinstance(dataset, (str, Path)):
        dataset = load_demos(dataset)
    made = isinstance(env, str)
    env_obj = gym.make(env) if made else env
    try:
        diffs = (_space_diffs("observation", dataset.observation_space,
                              env_obj.observation_space)
                 + _space_diffs("action", dataset.action_space, env_obj.action_space))
        env_name = env_obj.spec.id if env_obj.spec is not None else type(env_obj).__name__
    finally:
        if made:
            env_obj.close()
    if diffs:
        where = getattr(dataset, "path", getattr(dataset, "id", "dataset"))
        source = getattr(dataset, "env_id", None)
        raise IncompatibleDatasetError(
            f"dataset {where} (recorded on {source}) does not match env {env_name}: "
            + "; ".join(diffs))


def _space_diffs(name: str, data: spaces.Space, env: spaces.Space) -> list[str]:
    if isinstance(data, spaces.Dict) and isinstance(env, spaces.Dict):
        out = [f"{name}[{k!r}] only in dataset" for k in data.spaces if k not in env.spaces]
        out += [f"{name}[{k!r}] only in env" for k in env.spaces if k not in data.spaces]
        for key in data.spaces.keys() & env.spaces.keys():
            out += _space_diffs(f"{name}[{key!r}]", data[key], env[key])
        return out
    if isinstance(data, spaces.Text) and isinstance(env, spaces.Text):
        if (data.min_length, data.max_length) != (env.min_length, env.max_length):
            return [f"{name} text length {data.min_length}-{data.max_length} vs "
                    f"{env.min_length}-{env.max_length}"]
        if data.character_set != env.character_set:
            return [f"{name} charset differs ({sorted(data.character_set ^ env.character_set)})"]
        return []
    if isinstance(data, spaces.Box) and isinstance(env, spaces.Box):
        if data.shape != env.shape or data.dtype != env.dtype:
            return [f"{name} {data.shape} {data.dtype} vs {env.shape} {env.dtype}"]
        if not (np.array_equal(data.low, env.low) and np.array_equal(data.high, env.high)):
            return [f"{name} bounds differ"]
        return []
    if data != env:
        return [f"{name} {data} vs {env}"]
    return []
