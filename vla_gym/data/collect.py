"""Record scripted-expert episodes into a Minari dataset, resumably, over a vector env.

Episode ``j`` always starts from ``reset(seed=seed + j)`` whatever the number of envs (as in
``vla_gym.rollout``), so a dataset is the same episodes however the work is split or resumed.
"""

from __future__ import annotations

import functools
import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from vla_gym.data.layout import dataset_id, episode_dirs, read_json
from vla_gym.data.writer import DemoWriter
from vla_gym.interrupts import StopRequest
from vla_gym.rollout import info_row, merge_info
from vla_gym.types import CAMERA_OF_VIEW, IMAGE, landmark_label, pixel_label
from vla_gym.vector import make_vec

# Per-step info recorded with every frame (what a BC trainer's auxiliary heads read), with the
# value used where an env family does not report the key.
INFO_DEFAULTS: dict[str, Any] = {
    "is_success": False,
    "task": "",
    "target": "",
    "target_pos": np.zeros(3),
    "target_pixel": np.full(2, np.nan),  # where the target is in the image (NaN: not in view)
    "landmark_pixel": np.full(2, np.nan),  # where the object a relation names it by is
    "physics_diverged": False,
}


def info_defaults(obs_space: spaces.Dict) -> dict[str, Any]:
    """``INFO_DEFAULTS`` plus, for each extra camera the env observes, where the target is in
    that camera's image (``wrist_target_pixel``...), and the instruction's landmark
    (``wrist_landmark_pixel``...)."""
    views = [view for view in obs_space.spaces if view in CAMERA_OF_VIEW and view != IMAGE]
    extra = {label(view): np.full(2, np.nan) for view in views
             for label in (pixel_label, landmark_label)}
    return {**INFO_DEFAULTS, **extra}


@dataclass
class CollectSummary:
    env_id: str
    dataset_id: str
    path: str
    episodes: int
    recorded_now: int
    skipped: int
    seed: int
    num_envs: int
    success_rate: float | None  # of the episodes recorded by this call
    total_steps: int
    frames: int
    bytes_per_frame: float | None  # dataset bytes / stored observations (data/ only)
    episodes_per_second: float
    frames_per_second: float
    wall_seconds: float
    pending: int = 0  # finished episodes waiting in .pending/ for an earlier one
    interrupted: bool = False
    per_episode_success: list[bool] = field(default_factory=list)

    def to_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))


class _Episode:
    """One episode being recorded on one sub-env: observations (T+1), actions (T), infos."""

    def __init__(self, index: int, seed: int, obs_space: spaces.Dict) -> None:
        self.index, self.seed = index, seed
        self._text = {k for k, s in obs_space.spaces.items() if isinstance(s, spaces.Text)}
        self.obs: dict[str, list] = {k: [] for k in obs_space.spaces}
        self._info_defaults = info_defaults(obs_space)
        self.infos: dict[str, list] = {k: [] for k in self._info_defaults}
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.terminations: list[bool] = []
        self.truncations: list[bool] = []

    def add_frame(self, obs: dict[str, Any], info: dict[str, Any], i: int) -> None:
        for key, values in self.obs.items():
            values.append(str(obs[key][i]) if key in self._text else np.array(obs[key][i]))
        for key, default in self._info_defaults.items():
            value = info_row(info, key, i, default)
            if isinstance(default, np.ndarray):
                value = np.asarray(value, dtype=np.float64).reshape(default.shape)
            else:
                value = type(default)(value)
            self.infos[key].append(value)

    def add_step(self, action: np.ndarray, reward: float, terminated: bool,
                 truncated: bool) -> None:
        self.actions.append(np.array(action, dtype=np.float32))
        self.rewards.append(float(reward))
        self.terminations.append(bool(terminated))
        self.truncations.append(bool(truncated))

    def buffer(self) -> Any:
        from minari.data_collector.episode_buffer import EpisodeBuffer

        def column(values: list, text: bool) -> Any:
            return list(values) if text else np.stack(values)

        return EpisodeBuffer(
            id=self.index, seed=self.seed,
            observations={k: column(v, k in self._text) for k, v in self.obs.items()},
            actions=np.stack(self.actions), rewards=self.rewards,
            terminations=self.terminations, truncations=self.truncations,
            # Minari's Parquet codec only takes arrays of rank >= 2; scalars go as lists.
            infos={k: np.stack(v) if isinstance(self._info_defaults[k], np.ndarray) else list(v)
                   for k, v in self.infos.items()},
        )

    def metadata(self) -> dict[str, Any]:
        text = sorted(self._text)
        return {
            "success": bool(self.infos["is_success"][-1]),
            "task": self.infos["task"][-1], "target": self.infos["target"][-1],
            "instruction": self.obs[text[0]][0] if text else "",
            "return": float(np.sum(self.rewards)), "length": len(self.rewards),
        }


class _Slots:
    """Which episode each sub-env records; the queue holds the episodes still to do."""

    def __init__(self, todo: list[int], num_envs: int, seed: int, episodes: int,
                 obs_space: spaces.Dict) -> None:
        self.queue = deque(todo)
        self.seed, self.episodes, self.obs_space = seed, episodes, obs_space
        self.running: list[_Episode | None] = [None] * num_envs

    def assign(self, i: int) -> int:
        """Seed for sub-env ``i``'s next reset (an unused one once the queue is empty)."""
        if self.queue:
            j = self.queue.popleft()
            self.running[i] = _Episode(j, self.seed + j, self.obs_space)
            return self.seed + j
        self.running[i] = None
        return self.seed + self.episodes + 1_000_000 + i

    @property
    def busy(self) -> bool:
        return any(e is not None for e in self.running)


def collect_demos(
    env_id: str,
    episodes: int,
    out: str | Path,
    *,
    num_envs: int = 1,
    seed: int = 0,
    vectorization_mode: str | None = None,
    jpeg: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    expert_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> CollectSummary:
    """Record expert episodes ``0..episodes-1`` (seed ``seed + j``) of ``env_id`` under ``out``.

    Reruns skip the episodes already on disk. ``vectorization_mode`` defaults to ``"async"``
    (one process per env) when ``num_envs > 1``. ``jpeg`` stores images JPEG-encoded (lossy,
    ~3x smaller); the default keeps them exact. ``expert_options`` go to ``make_expert``
    (e.g. ``{"square_cubes": False}``); they are checked before anything is written and are
    part of what a resumed collection must repeat.
    """
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"episodes and num_envs must be >= 1, got {episodes}, {num_envs}")
    kwargs = canonical_kwargs(env_id, env_kwargs or {})
    params: dict[str, Any] = {"env_id": env_id, "env_kwargs": kwargs, "seed": seed,
                              "jpeg": jpeg}
    options = dict(expert_options or {})
    if options:
        check_expert_options(env_id, options)
        params["expert_options"] = options  # absent when empty: older datasets resume as before
    writer = DemoWriter(out, params)
    done_before = writer.recorded()
    todo = [j for j in range(episodes) if j not in done_before]
    start, interrupted, results = time.perf_counter(), False, {}
    try:
        if todo:
            mode = vectorization_mode or ("async" if num_envs > 1 else "sync")
            results, interrupted = _run(writer, env_id, todo, episodes, seed,
                                        min(num_envs, len(todo)), mode, jpeg, kwargs,
                                        options, progress)
        else:
            writer.open(*_spaces_without_env(writer), jpeg=jpeg)
    finally:
        writer.close()
    return _summary(writer, env_id, episodes, seed, num_envs, done_before, results,
                    time.perf_counter() - start, interrupted)


def canonical_kwargs(env_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` less those equal to the registered or constructor default, so that
    ``image_size=96`` and no ``image_size`` name the same dataset."""
    import inspect

    from gymnasium.envs.registration import load_env_creator

    spec = gym.spec(env_id)
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else None
    params = inspect.signature(creator).parameters if creator is not None else {}

    def default(key: str) -> Any:
        if key in spec.kwargs:
            return spec.kwargs[key]
        param = params.get(key)
        return param.default if param is not None else inspect.Parameter.empty

    return {k: v for k, v in kwargs.items() if default(k) != v}


def _spaces_without_env(writer: DemoWriter) -> tuple[gym.Space, gym.Space, Any]:
    from minari.dataset.minari_storage import MinariStorage

    storage = MinariStorage.read(writer.data)
    return storage.observation_space, storage.action_space, None


def _env_spec(env_id: str, kwargs: dict[str, Any]) -> gym.envs.registration.EnvSpec:
    spec = gym.spec(env_id)
    return replace(spec, kwargs={**spec.kwargs, **kwargs})


class ExpertOptionsError(ValueError):
    """Options the env's scripted expert does not take (the message names the valid ones)."""


def check_expert_options(env_id: str, options: dict[str, Any]) -> None:
    """Raise :class:`ExpertOptionsError` unless ``env_id``'s expert takes ``options``: here,
    before any worker starts or anything is written."""
    from vla_gym.experts import make_expert

    env = gym.make(env_id, obs_mode="state")
    try:
        make_expert(env, **options)
    except ValueError as exc:
        raise ExpertOptionsError(str(exc)) from None
    finally:
        env.close()


def _run(writer, env_id, todo, episodes, seed, num_envs, mode, jpeg, kwargs, options,
         progress_on):
    from vla_gym.experts import ExpertActions

    vec = make_vec(env_id, num_envs=num_envs, vectorization_mode=mode,
                   vector_kwargs={"autoreset_mode": AutoresetMode.DISABLED},
                   wrappers=[functools.partial(ExpertActions, **options)], **kwargs)
    interrupted, results = False, {}
    try:
        with StopRequest() as stop:
            writer.open(vec.single_observation_space, vec.single_action_space,
                        _env_spec(env_id, kwargs), jpeg=jpeg)
            slots = _Slots(todo, num_envs, seed, episodes, vec.single_observation_space)
            _loop(vec, slots, writer, results, len(todo), env_id, progress_on, stop)
            interrupted = stop.requested
    except KeyboardInterrupt:  # a second Ctrl-C, or one a spawned worker re-raised
        interrupted = True
    finally:
        vec.close(terminate=interrupted)  # spawned workers saw the Ctrl-C too
    return results, interrupted


def _loop(vec, slots: _Slots, writer: DemoWriter, results: dict, total: int, env_id: str,
          progress_on: bool, stop: StopRequest) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    obs, info = vec.reset(seed=[slots.assign(i) for i in range(vec.num_envs)])
    _record_frames(slots, obs, info, range(vec.num_envs))
    columns = (*Progress.get_default_columns()[:2], MofNCompleteColumn(), BarColumn(bar_width=0),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress_on, transient=True) as bar:
        task = bar.add_task(f"collect {env_id}", total=total)
        while slots.busy and not stop.requested:
            actions = np.asarray(info["expert_action"], dtype=np.float32)
            obs, reward, terminated, truncated, info = vec.step(actions)
            for i, episode in enumerate(slots.running):
                if episode is not None:
                    episode.add_step(actions[i], reward[i], terminated[i], truncated[i])
            _record_frames(slots, obs, info, range(vec.num_envs))
            ended = np.flatnonzero(np.logical_or(terminated, truncated))
            if len(ended) == 0:
                continue
            for i in ended:
                episode = slots.running[i]
                if episode is not None:
                    meta = episode.metadata()
                    writer.write(episode.index, episode.buffer(), meta)
                    results[episode.index] = meta["success"]
            bar.update(task, completed=len(results))
            mask = np.zeros(vec.num_envs, bool)
            mask[ended] = True
            seeds = [slots.assign(i) if mask[i] else None for i in range(vec.num_envs)]
            obs, reset_info = vec.reset(seed=seeds, options={"reset_mask": mask})
            info = merge_info(info, reset_info, mask)
            _record_frames(slots, obs, info, ended)


def _record_frames(slots: _Slots, obs: dict, info: dict, rows) -> None:
    for i in rows:
        episode = slots.running[i]
        if episode is not None:
            episode.add_frame(obs, info, i)


def _summary(writer: DemoWriter, env_id, episodes, seed, num_envs, done_before, results,
             wall, interrupted) -> CollectSummary:
    frames = writer.total_steps + writer.total_episodes
    new_steps = 0
    if results:
        new_steps = sum(_episode_length(writer, j) for j in results)
    successes = [bool(v) for _, v in sorted(results.items())]
    rate = float(np.mean(successes)) if successes else None
    return CollectSummary(
        env_id=env_id, dataset_id=dataset_id(env_id), path=str(writer.dir), episodes=episodes,
        recorded_now=len(results), skipped=len(done_before & set(range(episodes))),
        seed=seed, num_envs=num_envs, success_rate=rate, total_steps=writer.total_steps,
        frames=frames, bytes_per_frame=writer.data_bytes / frames if frames else None,
        episodes_per_second=len(results) / wall if wall > 0 else float("nan"),
        frames_per_second=(new_steps + len(results)) / wall if wall > 0 else float("nan"),
        wall_seconds=wall, pending=len(episode_dirs(writer.pending)), interrupted=interrupted,
        per_episode_success=successes,
    )


def _episode_length(writer: DemoWriter, index: int) -> int:
    for folder in (writer.data, writer.pending):
        if (folder / str(index)).is_dir():
            return int(read_json(folder / str(index) / "metadata.json")["total_steps"])
    return 0
