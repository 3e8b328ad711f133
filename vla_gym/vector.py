"""``make_vec``: ``gym.make_vec`` with spawned workers in async mode and cheaper info batching.

A GL context does not survive ``fork()``: once the parent process has rendered, forked
workers hang in EGL initialisation. Async workers therefore start by ``spawn`` (each imports
vla_gym afresh). The batched instruction stays current in shared memory thanks to
``vla_gym.envs.base.InstructionText``.

Sync and async modes build ``SyncVectorEnv`` / ``AsyncVectorEnv`` subclasses whose only change
is a faster ``_add_info``: gymnasium's allocates a fresh mask and re-derives each key's batch
type for every key of every sub-env on every step, which with our ~10-20 info keys cost more
per step than the rest of the vector machinery together. Batched infos are unchanged.

Async mode with ``num_envs >= 2`` builds a ``HybridVectorEnv``: the parent process steps
``local_envs`` of the envs itself (envs ``0 .. local_envs-1``) while spawned workers, one per
env, step the rest. A step sends the workers their actions, steps the local envs meanwhile and
then collects the workers' results, which are usually ready by then. Waking a process blocked
on a pipe is slow on some machines (a pipe round trip cost ~0.7 ms on a 2-core VM, more than
a 96 px env step, so plain ``AsyncVectorEnv`` with 2 envs stepped slower than one env in
process); the parent, busy with its own envs, rarely waits, and workers and parent wait for
each other by polling (yielding the CPU to anything else runnable) for up to ``spin_s``
seconds before they block. Steps travel as raw bytes (the action's, then reward, flags and
the pickled info; observations in gymnasium's shared memory) rather than gymnasium's pickled
tuples, whose numpy pickling cost more than the pipe itself; other commands go as gymnasium's.
As in ``AsyncVectorEnv``, a worker whose env raises is shut down
(its error is re-raised in the parent).

Results are bit-identical to ``SyncVectorEnv``'s for the same seeds and actions (observations,
rewards, terminations, truncations, infos with gymnasium's masks and dtypes, the instruction
batch as a tuple of str), and seeding follows gymnasium's (``seed=s`` gives env ``i`` seed
``s + i``). ``vector_kwargs`` for async mode may add:

  ``local_envs``  envs stepped in the parent; default ``num_envs // cores`` (at least 1, at
                  most ``num_envs - 1``), i.e. one env per process while there are cores for
                  them. ``local_envs=0`` gives plain ``AsyncVectorEnv`` (every env in a
                  worker), which is also what ``num_envs=1`` gets.
  ``spin_s``      how long the hybrid's parent and workers poll before blocking (default
                  ``SPIN_S``; 0 blocks at once, as ``AsyncVectorEnv`` does).

The remaining ``AsyncVectorEnv`` keyword arguments apply to the workers (``copy``,
``observation_mode`` and ``autoreset_mode`` to both parts; the hybrid needs
``observation_mode="same"`` and shared memory, others fall back to plain ``AsyncVectorEnv``;
a custom ``worker`` does too). ``close(terminate=True)`` terminates the workers without
waiting for them, as ``AsyncVectorEnv``'s does.
"""

from __future__ import annotations

import copy
import functools
import os
import pickle
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec, VectorizeMode
from gymnasium.error import AlreadyPendingCallError, ClosedEnvironmentError, NoAsyncCallError
from gymnasium.vector.async_vector_env import AsyncState, _async_worker
from gymnasium.vector.utils import batch_space, iterate
from gymnasium.vector.vector_env import AutoresetMode

ASYNC_DEFAULTS: dict[str, Any] = {"context": "spawn"}
# Seconds the hybrid's parent and workers poll before blocking on a pipe: covers the gap
# between steps of a loop that does little else, not a slow policy.
SPIN_S = 0.002


class LeanInfoMixin:
    """``VectorEnv._add_info`` with the same result in a few dict operations per key and
    sub-env; ``final_obs`` and nested dicts go to gymnasium's."""

    num_envs: int

    def _add_info(self, vector_infos: dict[str, Any], env_info: dict[str, Any],
                  env_num: int) -> dict[str, Any]:
        for key, value in env_info.items():
            if key == "final_obs" or isinstance(value, dict):
                super()._add_info(vector_infos, {key: value}, env_num)  # type: ignore[misc]
                continue
            mask_key = "_" + key
            mask = vector_infos.get(mask_key)
            if mask is None:  # key before mask, as gymnasium orders them
                vector_infos[key] = empty_info_batch(value, self.num_envs)
                mask = vector_infos[mask_key] = np.zeros(self.num_envs, dtype=np.bool_)
            vector_infos[key][env_num] = value
            mask[env_num] = True
        return vector_infos


def empty_info_batch(value: Any, n: int) -> np.ndarray:
    """The array ``VectorEnv._add_info`` batches ``value``'s key into (gymnasium's rule)."""
    kind = type(value)
    if kind in (int, float, bool) or issubclass(kind, np.number):
        return np.zeros(n, dtype=kind)
    if isinstance(value, np.ndarray):
        return np.zeros((n, *value.shape), dtype=value.dtype)
    return np.full(n, fill_value=None, dtype=object)


class LeanSyncVectorEnv(LeanInfoMixin, gym.vector.SyncVectorEnv):
    """``SyncVectorEnv`` with ``LeanInfoMixin``'s info batching."""


class LeanAsyncVectorEnv(LeanInfoMixin, gym.vector.AsyncVectorEnv):
    """``AsyncVectorEnv`` with ``LeanInfoMixin``'s info batching."""


class _RecordInfoMixin:
    """Keeps each sub-env's info as it comes (``_raw_infos``) instead of batching it, so that
    ``HybridVectorEnv`` batches all its envs' infos in one pass, in env order."""

    _raw_infos: list[tuple[int, dict[str, Any]]]

    def _add_info(self, vector_infos: dict[str, Any], env_info: dict[str, Any],
                  env_num: int) -> dict[str, Any]:
        self._raw_infos.append((env_num, env_info))
        return vector_infos

    def take_infos(self) -> list[tuple[int, dict[str, Any]]]:
        infos, self._raw_infos = self._raw_infos, []
        return infos


class _LocalPart(_RecordInfoMixin, gym.vector.SyncVectorEnv):
    """The hybrid's in-process envs. ``step`` leaves each env's observation as it came
    (``rows``, also what ``reset`` leaves there): the hybrid copies each straight into its
    output batch, where ``SyncVectorEnv`` would first batch them into arrays of its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._raw_infos = []
        super().__init__(*args, **kwargs)

    @property
    def rows(self) -> list[Any]:
        return self._env_obs

    def step(self, actions: Any) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, Any]]:
        """``SyncVectorEnv.step``'s autoreset and results, the observations left unbatched."""
        mode = self.autoreset_mode
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED,
                        AutoresetMode.SAME_STEP):
            raise ValueError(f"Unexpected autoreset mode, {mode}")
        for i, action in enumerate(iterate(self.action_space, actions)):
            env = self.envs[i]
            if mode == AutoresetMode.NEXT_STEP and self._autoreset_envs[i]:
                self._env_obs[i], info = env.reset()
                self._rewards[i] = 0.0
                self._terminations[i] = self._truncations[i] = False
            else:
                # DISABLED assumes the caller reset finished envs (gymnasium asserts it too)
                assert mode != AutoresetMode.DISABLED or not self._autoreset_envs[i]
                (self._env_obs[i], self._rewards[i], self._terminations[i],
                 self._truncations[i], info) = env.step(action)
                if mode == AutoresetMode.SAME_STEP and (self._terminations[i]
                                                        or self._truncations[i]):
                    self._add_info({}, {"final_obs": self._env_obs[i], "final_info": info}, i)
                    self._env_obs[i], info = env.reset()
            self._add_info({}, info, i)
        self._autoreset_envs = np.logical_or(self._terminations, self._truncations)
        return (self._env_obs, self._rewards.copy(), self._terminations.copy(),
                self._truncations.copy(), {})


class _RemotePart(_RecordInfoMixin, gym.vector.AsyncVectorEnv):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._raw_infos = []
        super().__init__(*args, **kwargs)

    def send_steps(self, actions: Any) -> None:
        """``step_async`` in the hybrid's step messages (see ``encode_step``)."""
        self._assert_is_running()
        if self._state != AsyncState.DEFAULT:
            raise AlreadyPendingCallError(
                f"Calling `step_async` while waiting for a pending call to "
                f"`{self._state.value}` to complete.", str(self._state.value))
        for pipe, action in zip(self.parent_pipes, iterate(self.action_space, actions),
                                strict=True):
            pipe.send_bytes(encode_step(action))
        self._state = AsyncState.WAITING_STEP

    def receive_steps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``step_wait`` for ``send_steps``: rewards, terminations and truncations (the
        observations are in shared memory, the infos go to ``take_infos``); a worker's error
        is raised as ``step_wait`` raises it."""
        self._assert_is_running()
        if self._state != AsyncState.WAITING_STEP:
            raise NoAsyncCallError("Calling `step_wait` without any prior call to "
                                   "`step_async`.", AsyncState.WAITING_STEP.value)
        results = [decode_step_result(pipe.recv_bytes()) for pipe in self.parent_pipes]
        self._raise_if_errors([result is not None for result in results])
        self._state = AsyncState.DEFAULT
        done = [result for result in results if result is not None]  # all, once no error
        self._raw_infos.extend((i, result[3]) for i, result in enumerate(done))
        columns = list(zip(*done, strict=True))
        return (np.array(columns[0], dtype=np.float64), np.array(columns[1], dtype=np.bool_),
                np.array(columns[2], dtype=np.bool_))

    def results_ready(self, spin_s: float) -> None:
        """Poll the workers' pipes for up to ``spin_s`` s; the blocking wait comes after."""
        if spin_s > 0:
            _spin_until_readable([p for p in self.parent_pipes if p is not None], spin_s)

    def close_now(self) -> None:
        """Terminate the workers without a word to them (after a failed ``close``)."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for pipe in self.parent_pipes:
            if pipe is not None:
                pipe.close()
        for process in self.processes:
            process.join()
        self._state = AsyncState.DEFAULT
        self.closed = True


_yield_cpu: Callable[[], Any] = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


def _spin_until_readable(pipes: Sequence[Any], spin_s: float) -> bool:
    """Poll ``pipes`` until all are readable or ``spin_s`` passes, yielding the CPU between
    polls: the process stays runnable, so its CPU does not go idle (and slow to wake)."""
    pending = [p for p in pipes if not p.poll()]
    if not pending:
        return True
    deadline = time.perf_counter() + spin_s
    while True:
        _yield_cpu()
        pending = [p for p in pending if not p.poll()]
        if not pending:
            return True
        if time.perf_counter() > deadline:
            return False


# The hybrid's step messages, in place of gymnasium's pickled ("step", action) and
# ((obs, reward, terminated, truncated, info), success): pickling a 7-float action array
# alone costs ~11 us against ~3 for its raw bytes, and both ends run right after a render,
# when such Python runs 2-3x slower. A pickle stream starts with b"\x80", never with these.
_STEP = b"S"  # + the action's dtype str, ndim and shape, then its raw bytes
_STEP_OK = b"\x01"  # + _STEP_RESULT (reward, terminated, truncated) + pickled info
_STEP_FAILED = b"\x00"  # the error is on the error queue, as gymnasium's worker leaves it
_STEP_RESULT = struct.Struct("<d??")


def encode_step(action: Any) -> bytes:
    """A step message: a numeric array as its dtype, shape and raw bytes (exactly the array
    the worker's env gets, dtype included), anything else pickled after ``_STEP`` + 0."""
    if isinstance(action, np.ndarray) and action.dtype.kind in "biuf" and action.ndim < 256:
        header = (_STEP + action.dtype.str.encode("ascii").ljust(4) + bytes([action.ndim])
                  + struct.pack(f"<{action.ndim}I", *action.shape))
        return header + np.ascontiguousarray(action).tobytes()
    return _STEP + b"\0" + pickle.dumps(action, protocol=pickle.HIGHEST_PROTOCOL)


def decode_step(message: bytes) -> Any:
    """The action in an ``encode_step`` message."""
    if message[1:2] == b"\0":
        return pickle.loads(message[2:])
    dtype = np.dtype(message[1:5].decode("ascii").strip())
    ndim = message[5]
    shape = struct.unpack_from(f"<{ndim}I", message, 6)
    # a copy: the env may keep or change the action it is given
    return np.frombuffer(message, dtype=dtype, offset=6 + 4 * ndim).reshape(shape).copy()


def encode_step_result(result: tuple[Any, bool]) -> bytes:
    """gymnasium's worker's step reply (observation already in shared memory) as bytes."""
    step_return, success = result
    if not success:
        return _STEP_FAILED
    _, reward, terminated, truncated, info = step_return
    return (_STEP_OK + _STEP_RESULT.pack(float(reward), bool(terminated), bool(truncated))
            + pickle.dumps(info, protocol=pickle.HIGHEST_PROTOCOL))


def decode_step_result(message: bytes) -> tuple[float, bool, bool, dict[str, Any]] | None:
    """(reward, terminated, truncated, info), or None for a worker that failed."""
    if message[:1] != _STEP_OK:
        return None
    reward, terminated, truncated = _STEP_RESULT.unpack_from(message, 1)
    return reward, terminated, truncated, pickle.loads(message[1 + _STEP_RESULT.size:])


class _WorkerPipe:
    """A hybrid worker's end of its pipe, under gymnasium's worker loop: ``recv`` polls for
    ``spin_s`` before blocking and turns step messages into ("step", action); the reply to
    such a step goes back as ``encode_step_result`` bytes, every other reply pickled."""

    def __init__(self, conn: Any, spin_s: float) -> None:
        self._conn = conn
        self._spin_s = spin_s
        self._in_step = False

    def recv(self) -> Any:
        _spin_until_readable((self._conn,), self._spin_s)
        message = self._conn.recv_bytes()
        self._in_step = message[:1] == _STEP
        if self._in_step:
            return "step", decode_step(message)
        return pickle.loads(message)

    def send(self, obj: Any) -> None:
        if self._in_step:
            self._in_step = False
            self._conn.send_bytes(encode_step_result(obj))
        else:
            self._conn.send(obj)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _ObservationWriter:
    """gymnasium's ``write_to_shared_memory`` as one ``np.copyto`` per observation key into a
    view kept from the first write. gymnasium's re-derives the destination (``np.prod`` of the
    shape, ``np.frombuffer``) and copies each value twice (``flatten``, then ``copyto``) on
    every step, ~25 us a step for an image, a state and an instruction here. Anything but a
    ``Dict`` of array spaces and ``InstructionText``, or a value of another shape, goes to
    gymnasium's writer (and its errors)."""

    def __init__(self, fallback: Callable[..., None]) -> None:
        self._fallback = fallback
        self._plans: dict[tuple[int, int, int], list[tuple[str, Any, np.ndarray]] | None] = {}

    def __call__(self, space: spaces.Space, index: int, value: Any, shared_memory: Any) -> None:
        key = (id(space), index, id(shared_memory))
        plan = self._plans.get(key, False)
        if plan is False:
            plan = self._plans[key] = _write_plan(space, index, shared_memory)
        if plan is None or not isinstance(value, dict):
            self._fallback(space, index, value, shared_memory)
            return
        for name, sub, destination in plan:
            item = value[name]
            if sub is None:  # an array space
                if np.shape(item) != destination.shape:
                    self._fallback(space, index, value, shared_memory)
                    return
                np.copyto(destination, item, casting="unsafe")
            else:
                destination[:] = sub.codes(item)


def _write_plan(space: spaces.Space, index: int, shared_memory: Any,
                ) -> list[tuple[str, Any, np.ndarray]] | None:
    """(key, InstructionText or None for arrays, destination row) per key of a Dict space."""
    # Imported here: this module stays importable (and ``vla-gym doctor`` able to report)
    # where MuJoCo cannot start.
    from vla_gym.envs.base import InstructionText

    if not isinstance(space, spaces.Dict):
        return None
    plan = []
    for name, sub in space.spaces.items():
        if isinstance(sub, _ARRAY_SPACES):
            size = int(np.prod(sub.shape))
            whole = np.frombuffer(shared_memory[name].get_obj(), dtype=sub.dtype)
            plan.append((name, None, whole[index * size:(index + 1) * size].reshape(sub.shape)))
        elif isinstance(sub, InstructionText):
            size = sub.max_length
            whole = np.frombuffer(shared_memory[name].get_obj(), dtype=np.int32)
            plan.append((name, sub, whole[index * size:(index + 1) * size]))
        else:
            return None
    return plan


def _hybrid_worker(index, env_fn, pipe, parent_pipe, shared_memory, error_queue,
                   autoreset_mode, semaphore, *, spin_s: float) -> None:
    """gymnasium's worker (with shared-memory observations) speaking through ``_WorkerPipe``
    and writing observations with ``_ObservationWriter``. The writer is swapped into
    gymnasium's worker module in this process alone: a spawned process that runs this
    worker and nothing else."""
    from gymnasium.vector import async_vector_env

    async_vector_env.write_to_shared_memory = _ObservationWriter(
        async_vector_env.write_to_shared_memory)
    _async_worker(index, env_fn, _WorkerPipe(pipe, spin_s), parent_pipe, shared_memory,
                  error_queue, autoreset_mode, semaphore)


class HybridVectorEnv(LeanInfoMixin, gym.vector.VectorEnv):
    """Envs ``0 .. local_envs-1`` stepped in this process, the rest in spawned workers (see
    the module docstring); batches as ``SyncVectorEnv``'s."""

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        local_envs: int = 1,
        copy: bool = True,
        observation_mode: str = "same",
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        spin_s: float = SPIN_S,
        **async_kwargs: Any,
    ) -> None:
        super().__init__()
        num_envs = len(env_fns)
        if not isinstance(local_envs, (int, np.integer)) or not 1 <= local_envs < num_envs:
            raise ValueError(f"local_envs must be an integer in [1, num_envs - 1] = "
                             f"[1, {num_envs - 1}], got {local_envs!r}")
        if observation_mode != "same":
            raise ValueError("HybridVectorEnv supports observation_mode='same' only, got "
                             f"{observation_mode!r}")
        if not async_kwargs.get("shared_memory", True):
            raise ValueError("HybridVectorEnv's workers return observations in shared memory; "
                             "use AsyncVectorEnv for shared_memory=False")
        if async_kwargs.get("worker") is not None:
            raise ValueError("HybridVectorEnv runs its own worker; use AsyncVectorEnv for a "
                             "custom one")
        if spin_s < 0:
            raise ValueError(f"spin_s must be >= 0, got {spin_s!r}")
        self.num_envs = num_envs
        self.local_envs = int(local_envs)
        self.copy = copy
        self.spin_s = float(spin_s)
        shared = {"copy": False, "observation_mode": observation_mode,
                  "autoreset_mode": autoreset_mode}
        # Workers first: if they fail to start, there are no local envs to close.
        self._remote = _RemotePart(
            env_fns[self.local_envs:], **shared, **async_kwargs,
            worker=functools.partial(_hybrid_worker, spin_s=self.spin_s))
        try:
            self._local = _LocalPart(env_fns[:self.local_envs], **shared)
            if self._local.single_observation_space != self._remote.single_observation_space:
                raise RuntimeError("HybridVectorEnv: the local and remote envs' observation "
                                   "spaces differ")
            if self._local.single_action_space != self._remote.single_action_space:
                raise RuntimeError("HybridVectorEnv: the local and remote envs' action spaces "
                                   "differ")
        except BaseException:
            self._remote.close(terminate=True)
            raise
        self.autoreset_mode = self._local.autoreset_mode
        self.metadata = dict(self._local.metadata)
        self.render_mode = self._local.render_mode
        self.single_observation_space = self._local.single_observation_space
        self.single_action_space = self._local.single_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        # The workers' rows are always self._remote.observations (shared memory, copy=False);
        # the local envs' are their last observations, one per env (``_LocalPart.rows``).

    # -- reset / step ---------------------------------------------------------------------

    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self._assert_is_running()
        if seed is None:
            seed = [None] * self.num_envs
        elif isinstance(seed, int):
            seed = [seed + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"If seeds are passed as a list the length must match "
                             f"num_envs={self.num_envs} but got length={len(seed)}.")
        k = self.local_envs
        part_options: list[dict[str, Any] | None] = [options, options]
        todo = [True, True]
        if options is not None and "reset_mask" in options:
            rest = dict(options)
            mask = rest.pop("reset_mask")
            self._check_reset_mask(mask)
            part_options = [{**rest, "reset_mask": mask[:k]}, {**rest, "reset_mask": mask[k:]}]
            todo = [bool(mask[:k].any()), bool(mask[k:].any())]
        if todo[1]:
            self._remote.reset_async(seed=list(seed[k:]), options=part_options[1])
        try:
            if todo[0]:
                self._local.reset(seed=list(seed[:k]), options=part_options[0])
        except BaseException as exc:
            if todo[1]:
                self._abandon_remote(self._remote.reset_wait, exc)
            raise
        obs, infos = self._local_half()
        if todo[1]:
            self._remote.results_ready(self.spin_s)
            self._remote.reset_wait()
        return self._remote_half(obs, infos), infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, Any]]:
        self._assert_is_running()
        local_actions, remote_actions = _split(self.action_space, actions, self.local_envs,
                                               self.num_envs)
        self._remote.send_steps(remote_actions)
        try:
            local = self._local.step(local_actions)
        except BaseException as exc:
            self._abandon_remote(self._remote.receive_steps, exc)
            raise
        obs, infos = self._local_half()  # while the workers finish
        self._remote.results_ready(self.spin_s)
        remote = self._remote.receive_steps()
        return (self._remote_half(obs, infos), np.concatenate((local[1], remote[0])),
                np.concatenate((local[2], remote[1])), np.concatenate((local[3], remote[2])),
                infos)

    def _check_reset_mask(self, mask: Any) -> None:
        """gymnasium's checks of ``options["reset_mask"]``, with its messages."""
        if not isinstance(mask, np.ndarray):
            raise TypeError(f"`options['reset_mask']` must be a numpy array, got {type(mask)}")
        if mask.shape != (self.num_envs,):
            raise ValueError(f"`options['reset_mask']` must have shape `({self.num_envs},)`, "
                             f"got {mask.shape}")
        if mask.dtype != np.bool_:
            raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got "
                            f"{mask.dtype}")
        if not np.any(mask):
            raise ValueError("`options['reset_mask']` must contain a boolean array with at "
                             f"least one True value, got reset_mask={mask}")

    def _abandon_remote(self, wait: Callable[[], Any], exc: BaseException) -> None:
        """After the local part failed: collect the workers' pending results (dropping them
        and any error of theirs) so the env stays usable; on Ctrl-C leave them to ``close``."""
        if isinstance(exc, Exception):
            try:
                wait()
            except Exception:
                pass
        self._remote.take_infos()

    def _local_half(self) -> tuple[Any, dict[str, Any]]:
        """The batch's local rows: observations (in arrays for all envs) and infos."""
        obs = _start_join(self.single_observation_space, self._local.rows, self.num_envs,
                          self.copy)
        infos: dict[str, Any] = {}
        for i, info in self._local.take_infos():
            self._add_info(infos, info, i)
        return obs, infos

    def _remote_half(self, obs: Any, infos: dict[str, Any]) -> Any:
        """The workers' rows added to ``_local_half``'s (``infos`` in place)."""
        for i, info in self._remote.take_infos():
            self._add_info(infos, info, self.local_envs + i)
        return _end_join(self.single_observation_space, obs, self._remote.observations,
                         self.local_envs, self.copy)

    # -- sub-env access --------------------------------------------------------------------

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        self._assert_is_running()
        if name in ("reset", "step", "close", "_setattr", "_check_spaces"):
            # AsyncVectorEnv's refusal, raised here so no worker dies of it
            raise ValueError(f"Trying to call function `{name}` with `call`, use `{name}` "
                             "directly instead.")
        self._remote.call_async(name, *args, **kwargs)
        try:
            local = self._local.call(name, *args, **kwargs)
        except BaseException as exc:
            self._abandon_remote(self._remote.call_wait, exc)
            raise
        self._remote.results_ready(self.spin_s)
        return tuple(local) + tuple(self._remote.call_wait())

    def render(self) -> tuple[Any, ...] | None:
        return self.call("render")

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)

    def set_attr(self, name: str, values: Any) -> None:
        self._assert_is_running()
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError("Values must be a list or tuple with length equal to the number "
                             f"of environments. Got `{len(values)}` values for {self.num_envs} "
                             "environments.")
        self._local.set_attr(name, list(values[:self.local_envs]))
        self._remote.set_attr(name, list(values[self.local_envs:]))

    @property
    def np_random_seed(self) -> tuple[int, ...]:
        return self.get_attr("np_random_seed")

    @property
    def np_random(self) -> tuple[np.random.Generator, ...]:
        return self.get_attr("np_random")

    # -- closing ---------------------------------------------------------------------------

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        try:
            try:
                self._remote.close(timeout=timeout, terminate=terminate)
            except BaseException:
                # e.g. the error a worker died of (Ctrl-C reaches the workers too), raised
                # while collecting a pending result: the workers still have to go
                self._remote.close_now()
                if not terminate:
                    raise
        finally:
            self._local.close()

    def _assert_is_running(self) -> None:
        if self.closed:
            raise ClosedEnvironmentError(
                f"Trying to operate on `{type(self).__name__}`, after a call to `close()`.")

    def __del__(self) -> None:
        if not getattr(self, "closed", True) and hasattr(self, "_local"):
            self.close(terminate=True)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_envs={self.num_envs}, "
                f"local_envs={self.local_envs})")


def _split(space: spaces.Space, batch: Any, k: int, n: int) -> tuple[Any, Any]:
    """A batch of ``space`` cut into its first ``k`` rows and the rest."""
    if isinstance(space, spaces.Dict):
        parts = {key: _split(sub, batch[key], k, n) for key, sub in space.items()}
        return ({key: p[0] for key, p in parts.items()}, {key: p[1] for key, p in parts.items()})
    if isinstance(space, spaces.Tuple):
        parts = [_split(sub, item, k, n) for sub, item in zip(space.spaces, batch, strict=True)]
        return tuple(p[0] for p in parts), tuple(p[1] for p in parts)
    if not isinstance(batch, np.ndarray) and isinstance(space, (spaces.Box, spaces.Discrete,
                                                                spaces.MultiDiscrete,
                                                                spaces.MultiBinary)):
        batch = np.asarray(batch)
    if len(batch) != n:
        raise ValueError(f"expected a batch of {n} actions, got {len(batch)}")
    return batch[:k], batch[k:]


def _start_join(space: spaces.Space, rows: Sequence[Any], n: int, copy_objects: bool) -> Any:
    """A batch of ``n`` for ``space`` with the single observations ``rows`` in its first rows;
    ``_end_join`` adds the rest. Arrays come out fresh, with ``batch_space``'s dtype;
    other items (``Text``: the instruction, ``Graph``...) as a tuple, deep-copied with
    ``copy_objects`` as ``SyncVectorEnv(copy=True)`` does."""
    if isinstance(space, spaces.Dict):
        return {key: _start_join(sub, [row[key] for row in rows], n, copy_objects)
                for key, sub in space.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_start_join(sub, [row[j] for row in rows], n, copy_objects)
                     for j, sub in enumerate(space.spaces))
    if isinstance(space, _ARRAY_SPACES):
        out = np.empty((n, *space.shape), dtype=space.dtype)
        for i, row in enumerate(rows):
            out[i] = row
        return out
    return tuple(copy.deepcopy(rows) if copy_objects else rows)


# Spaces whose batches are one array with a leading env axis (gymnasium's batch_space).
_ARRAY_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def _end_join(space: spaces.Space, out: Any, b: Any, k: int, copy_objects: bool) -> Any:
    """``_start_join``'s batch with batch ``b`` in its rows from ``k`` on."""
    if isinstance(space, spaces.Dict):
        return {key: _end_join(sub, out[key], b[key], k, copy_objects)
                for key, sub in space.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_end_join(sub, o, x, k, copy_objects)
                     for sub, o, x in zip(space.spaces, out, b))
    if isinstance(out, np.ndarray):
        out[k:] = b
        return out
    return out + tuple(copy.deepcopy(b) if copy_objects else b)


VECTOR_CLASSES: dict[VectorizeMode, Callable[..., gym.vector.VectorEnv]] = {
    VectorizeMode.SYNC: LeanSyncVectorEnv,
    VectorizeMode.ASYNC: LeanAsyncVectorEnv,
}


def make_vec(
    env_id: str | EnvSpec,
    num_envs: int = 1,
    vectorization_mode: str = "sync",
    vector_kwargs: dict[str, Any] | None = None,
    wrappers: Sequence[Callable[[gym.Env], gym.Wrapper]] | None = None,
    **env_kwargs: Any,
) -> gym.vector.VectorEnv:
    """Like ``gym.make_vec``; async mode with 2+ envs is a ``HybridVectorEnv`` with spawned
    workers (see the module docstring for its ``vector_kwargs``)."""
    kwargs = dict(vector_kwargs or {})
    mode = _lean_mode(vectorization_mode)
    if mode is None:  # other modes, and gymnasium's error for unknown ones
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode,
                            vector_kwargs=kwargs, wrappers=wrappers, **env_kwargs)
    if mode is VectorizeMode.ASYNC:
        kwargs = {**ASYNC_DEFAULTS, **kwargs}
    spec = env_id if isinstance(env_id, EnvSpec) else gym.spec(env_id)
    chain = tuple(wrappers or ())

    def make_one() -> gym.Env:
        env = gym.make(spec, **env_kwargs)
        for wrapper in chain:
            env = wrapper(env)
        return env

    env_fns = [make_one] * num_envs
    if mode is VectorizeMode.ASYNC:
        vec = _make_async(env_fns, kwargs)
    else:
        vec = VECTOR_CLASSES[mode](env_fns, **kwargs)
    vec.unwrapped.spec = _vector_spec(spec, num_envs, mode, kwargs, chain, env_kwargs)
    return vec


def default_local_envs(num_envs: int) -> int:
    """Envs a ``HybridVectorEnv`` steps in the parent unless told: ``num_envs // cores``, at
    least 1 and at most ``num_envs - 1``, so each process has about as many envs as there
    are cores for; 0 (no hybrid) for a single env."""
    if num_envs < 2:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(num_envs - 1, max(1, num_envs // (cores or 1)))


def _make_async(env_fns: list[Callable[[], gym.Env]],
                kwargs: dict[str, Any]) -> gym.vector.VectorEnv:
    """A ``HybridVectorEnv``, or ``LeanAsyncVectorEnv`` where it cannot or should not be."""
    kwargs = dict(kwargs)
    local = kwargs.pop("local_envs", None)
    spin_s = kwargs.pop("spin_s", SPIN_S)
    if local is None:
        local = default_local_envs(len(env_fns))
        if (kwargs.get("observation_mode", "same") != "same" or kwargs.get("worker")
                or not kwargs.get("shared_memory", True)):
            local = 0  # the hybrid's limits (module docstring): plain workers instead
    if local == 0:
        return LeanAsyncVectorEnv(env_fns, **kwargs)
    return HybridVectorEnv(env_fns, local_envs=local, spin_s=spin_s, **kwargs)


def _lean_mode(vectorization_mode: Any) -> VectorizeMode | None:
    """The mode if this module has a lean class for it, else None."""
    try:
        mode = VectorizeMode(vectorization_mode)
    except ValueError:
        return None
    return mode if mode in VECTOR_CLASSES else None


def _vector_spec(spec: EnvSpec, num_envs: int, mode: VectorizeMode, vector_kwargs: dict,
                 wrappers: tuple, env_kwargs: dict[str, Any]) -> EnvSpec:
    """The spec ``gym.make_vec`` records on the vector env, so it can be made again."""
    spec = copy.deepcopy(spec)
    spec.kwargs = {**spec.kwargs, **env_kwargs}
    if num_envs != 1:
        spec.kwargs["num_envs"] = num_envs
    spec.kwargs["vectorization_mode"] = mode.value
    if vector_kwargs:
        spec.kwargs["vector_kwargs"] = vector_kwargs
    if wrappers:
        spec.kwargs["wrappers"] = list(wrappers)
    return spec


__all__ = ["HybridVectorEnv", "LeanAsyncVectorEnv", "LeanSyncVectorEnv", "make_vec"]
