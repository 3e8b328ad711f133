"""Recording a deployment without slowing it: a bounded queue and a writer thread.

Two outputs, either or both: a rosbag2 bag (mcap, through ``rosbags``) of what went over the
wire, and ``episode_NNN.npz`` files in the observation contract's keys (image, state,
instruction, action) plus ``meta.json``; ``load_demos`` turns them into the BC trainer's
``Demos``, exactly as sim demonstrations are. When the disk cannot keep up, records are
dropped and counted -- the control loop never waits.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_gym.sim2real.transports.base import log
from vla_gym.types import IMAGE, INSTRUCTION, STATE

RECORD_FORMATS = ("mcap", "npz")


@dataclass
class StepRecord:
    """One control step: the observation the policy saw and what it did."""

    stamp: float  # wall-clock time (s) the observation was taken
    obs: dict[str, Any]
    action: np.ndarray  # normalised policy output (before the safety layer)
    command: np.ndarray  # physical command actually sent
    messages: list[tuple[str, Any]] = field(default_factory=list)  # (topic, msg) for the bag


class Recorder:
    """``begin(index)``, ``add(record)`` per step, ``end(summary)``, then ``close()``."""

    def __init__(self, path: str | Path, formats: tuple[str, ...] = RECORD_FORMATS,
                 meta: dict[str, Any] | None = None, max_queue: int = 512) -> None:
        bad = sorted(set(formats) - set(RECORD_FORMATS))
        if bad or not formats:
            raise ValueError(f"record formats must be among {RECORD_FORMATS}, got {formats}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.formats, self.meta = tuple(formats), dict(meta or {})
        self.dropped = self.written_steps = 0
        self.episodes: list[str] = []
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._bag = None
        if "mcap" in self.formats:
            from vla_gym.sim2real.rosbag import BagWriter

            self._bag = BagWriter(self.path / "rosbag2")
        self._steps: list[StepRecord] = []
        self._thread = threading.Thread(target=self._work, name="vla-recorder", daemon=True)
        self._thread.start()

    # -- control-loop side (never blocks) -----------------------------------------------------
    def begin(self, index: int) -> None:
        self._put(("begin", index))

    def add(self, record: StepRecord) -> None:
        self._put(("step", record))

    def end(self, summary: dict[str, Any]) -> None:
        self._put(("end", summary), block=True)

    def _put(self, item: tuple[str, Any], block: bool = False) -> None:
        try:
            self._queue.put(item, block=block, timeout=5.0 if block else None)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("recorder: disk is behind, %d records dropped", self.dropped)

    # -- writer thread ------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            kind, payload = self._queue.get()
            try:
                if kind == "stop":
                    return
                self._handle(kind, payload)
            except Exception:  # a recording failure must not touch the robot
                log.exception("recorder: could not write %s", kind)

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "begin":
            self._steps, self._index = [], int(payload)
        elif kind == "step":
            self._steps.append(payload)
            if self._bag is not None:
                for topic, msg in payload.messages:
                    self._bag.write(topic, msg, int(payload.stamp * 1e9))
        elif kind == "end":
            if "npz" in self.formats and self._steps:
                self._write_npz(payload)
            self.written_steps += len(self._steps)
            self._steps = []

    def _write_npz(self, summary: dict[str, Any]) -> None:
        steps = self._steps
        name = f"episode_{self._index:03d}.npz"
        np.savez_compressed(
            self.path / name,
            image=np.stack([s.obs[IMAGE] for s in steps]),
            state=np.stack([s.obs[STATE] for s in steps]).astype(np.float32),
            action=np.stack([s.action for s in steps]).astype(np.float32),
            command=np.stack([s.command for s in steps]).astype(np.float32),
            timestamp=np.array([s.stamp for s in steps]),
            instruction=np.array([s.obs[INSTRUCTION] for s in steps]),
        )
        self.episodes.append(name)
        meta = {**self.meta, "episodes": self.episodes}
        meta.setdefault("summaries", []).append(summary)
        self.meta = meta
        (self.path / "meta.json").write_text(json.dumps(meta, indent=2, default=str))

    def close(self) -> dict[str, Any]:
        self._queue.put(("stop", None))
        self._thread.join(timeout=30.0)
        if self._bag is not None:
            self._bag.close()
        return {"path": str(self.path), "episodes": len(self.episodes),
                "steps": self.written_steps, "dropped": self.dropped,
                "bag_messages": 0 if self._bag is None else self._bag.messages}


def load_demos(path: str | Path) -> Any:
    """A recording as ``vla_gym.training.demos.Demos`` (what ``BCTrainer`` samples from)."""
    from vla_gym.training.demos import Demos
    from vla_gym.types import ARM_EE_DELTA, BASE_VELOCITY

    meta = json.loads((Path(path) / "meta.json").read_text())
    contracts = {c.name: c for c in (ARM_EE_DELTA, BASE_VELOCITY)}
    return Demos.from_episodes(meta["sim_env"], meta.get("sim_kwargs", {}),
                               contracts[meta["action_contract"]], load_episodes(path))


def load_episodes(path: str | Path) -> list[dict[str, np.ndarray]]:
    """Recorded episodes as dicts of arrays (``image``, ``state``, ``action``, ...)."""
    out = []
    for file in sorted(Path(path).glob("episode_*.npz")):
        with np.load(file) as data:
            out.append({key: data[key] for key in data.files})
    return out
