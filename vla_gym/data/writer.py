"""Append finished episodes to a Minari dataset so that a kill never loses or half-writes one.

Each episode is written by Minari's own Parquet storage into a private staging folder, then
moved into place by one atomic ``rename``: a directory named ``<j>`` is always a complete
episode. Minari reads episodes ``0..total_episodes-1``, so episodes that finish out of order
(several envs) wait, complete, in ``.pending/`` until every earlier one is in ``data/``. A rerun
finds both folders, skips what they hold and continues.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from vla_gym.data.layout import (
    METADATA,
    PARAMS_KEY,
    PENDING,
    CorruptDatasetError,
    DatasetLockedError,
    IncompatibleDatasetError,
    dataset_dir,
    dataset_id,
    episode_dirs,
    read_json,
    write_json_atomic,
)

DATA_FORMAT = "parquet"  # per-episode files, Snappy-compressed columns
# Parameters that decide what episode j contains: a resumed collection must repeat them.
RESUME_KEYS = ("env_id", "env_kwargs", "seed", "jpeg", "expert_options")


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as they come back from JSON


class DemoWriter:
    """Creates or resumes the dataset for ``params["env_id"]`` under ``root``."""

    def __init__(self, root: str | Path, params: dict[str, Any]) -> None:
        self.params = _normalised(params)
        self.env_id: str = params["env_id"]
        self.dir = dataset_dir(root, self.env_id)
        self.data = self.dir / "data"
        self.pending = self.dir / PENDING
        self._lock_file: Any = None
        self._staging: Any = None
        self._spaces: tuple[gym.Space, gym.Space] | None = None
        self._meta: dict[str, Any] | None = None
        if self.dir.exists():
            if not (self.data / METADATA).is_file():
                raise CorruptDatasetError(f"{self.dir} exists but has no data/{METADATA}; "
                                          "delete it or collect into another --out")
            self._meta = read_json(self.data / METADATA)
            self._check_params(self._meta)

    def recorded(self) -> set[int]:
        """Indices of the episodes already on disk (in ``data/`` or ``.pending/``)."""
        return set(episode_dirs(self.data)) | set(episode_dirs(self.pending))

    def open(self, observation_space: gym.Space, action_space: gym.Space,
             env_spec: EnvSpec, jpeg: bool) -> None:
        """Create the dataset if new, take the writer lock, clear leftovers of killed runs."""
        self._spaces = (observation_space, action_space)
        if self._meta is None:
            self._create(observation_space, action_space, env_spec, jpeg)
        self._lock()
        for leftover in self.pending.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        self.pending.mkdir(exist_ok=True)
        self._count, self._steps, self._bytes = self._scan()
        self._promote()

    def write(self, index: int, buffer: Any, episode_metadata: dict[str, Any]) -> None:
        """Store one finished episode (a Minari ``EpisodeBuffer`` with ``id == index``)."""
        staging = self._staging_storage()
        staging.update_episodes([buffer])
        staging.update_episode_metadata([episode_metadata], [index])
        os.rename(staging.data_path / str(index), self.pending / str(index))
        self._promote()

    def close(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging.data_path, ignore_errors=True)
            self._staging = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @property
    def total_episodes(self) -> int:
        """Episodes Minari sees (contiguous from 0); ``.pending/`` ones come on top."""
        return self._count

    @property
    def total_steps(self) -> int:
        return self._steps

    @property
    def data_bytes(self) -> int:
        return self._bytes

    # -- internals ---------------------------------------------------------------------------

    def _check_params(self, meta: dict[str, Any]) -> None:
        stored = meta.get(PARAMS_KEY)
        if not isinstance(stored, dict):
            raise IncompatibleDatasetError(
                f"{self.data} is a Minari dataset not written by vla_gym collect; "
                "collect into another --out")
        diffs = [f"{k}: on disk {stored.get(k)!r}, asked {self.params.get(k)!r}"
                 for k in RESUME_KEYS if stored.get(k) != self.params.get(k)]
        if diffs:
            raise IncompatibleDatasetError(
                f"cannot resume {self.dir}: it was collected with other parameters ("
                + "; ".join(diffs) + "). Use the same parameters or another --out.")

    def _create(self, observation_space: gym.Space, action_space: gym.Space,
                env_spec: EnvSpec, jpeg: bool) -> None:
        from minari import __version__ as minari_version
        from minari.dataset.minari_storage import MinariStorage

        import vla_gym

        self.dir.parent.mkdir(parents=True, exist_ok=True)
        for leftover in self.dir.parent.glob(f".{self.dir.name}.*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = self.dir.parent / f".{self.dir.name}.{os.getpid()}.tmp"
        tmp.mkdir()
        storage = MinariStorage.new(tmp / "data", observation_space=observation_space,
                                    action_space=action_space, env_spec=env_spec,
                                    data_format=DATA_FORMAT, jpeg_encoding=jpeg)
        storage.update_metadata({
            "dataset_id": dataset_id(self.env_id),
            "minari_version": minari_version,
            "algorithm_name": "vla_gym scripted expert",
            "author": {"vla_gym"},
            "description": f"Scripted-expert demonstrations of {self.env_id}; episode j is "
                           f"reset with seed {self.params['seed']} + j.",
            "requirements": [f"vla_gym>={vla_gym.__version__}"],
            PARAMS_KEY: {**self.params, "vla_gym_version": vla_gym.__version__},
        })
        os.rename(tmp, self.dir)
        self._meta = read_json(self.data / METADATA)

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process guard
            return
        self._lock_file = open(self.dir / ".lock", "w")  # held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            raise DatasetLockedError(f"another collection is writing {self.dir}") from None

    def _staging_storage(self) -> Any:
        if self._staging is None:
            from minari.dataset.minari_storage import MinariStorage

            assert self._spaces is not None and self._meta is not None
            self._staging = MinariStorage.new(
                self.pending / f".staging-{os.getpid()}", observation_space=self._spaces[0],
                action_space=self._spaces[1], data_format=DATA_FORMAT,
                jpeg_encoding=bool(self._meta.get("jpeg_encoding", True)))
        return self._staging

    def _scan(self) -> tuple[int, int, int]:
        """Contiguous episode count, their steps and bytes, read from disk (after a kill the
        top-level metadata may lag one episode behind the folders)."""
        present = episode_dirs(self.data)
        count = 0
        while count in present:
            count += 1
        steps = sum(_episode_steps(present[j]) for j in range(count))
        size = sum(_folder_bytes(present[j]) for j in range(count))
        return count, steps, size

    def _promote(self) -> None:
        assert self._meta is not None
        pending = episode_dirs(self.pending)
        moved = False
        while self._count in pending:
            source = pending[self._count]
            steps, size = _episode_steps(source), _folder_bytes(source)
            os.rename(source, self.data / str(self._count))
            self._count, self._steps, self._bytes = (
                self._count + 1, self._steps + steps, self._bytes + size)
            moved = True
        if moved or self._meta.get("total_episodes") != self._count:
            self._meta.update(total_episodes=self._count, total_steps=self._steps,
                              dataset_size=round(self._bytes / 1e6, 1))
            write_json_atomic(self.data / METADATA, self._meta)


def _episode_steps(folder: Path) -> int:
    steps = read_json(folder / METADATA).get("total_steps")
    if not isinstance(steps, int):
        raise CorruptDatasetError(f"{folder / METADATA} has no total_steps")
    return steps


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
