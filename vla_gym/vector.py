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
``local_envs`` of the envs itself (envs ``0 .. local_envs-1``) while ``workers`` spawned
processes step the rest, each a contiguous group of them (one process per core: with more
processes than cores they take turns, and plain ``AsyncVectorEnv``'s one process per env made
8 envs on 2 cores step slower than one env). A step sends each worker its group's actions,
steps the local envs meanwhile and then collects the workers' results, which are usually
ready by then. Waking a process blocked on a pipe is slow on some machines (a pipe round trip
cost ~0.7 ms on a 2-core VM, more than a 96 px env step); the parent, busy with its own envs,
rarely waits, and workers and parent wait for each other by polling (yielding the CPU to
anything else runnable) for up to ``spin_s`` seconds before they block. Steps travel as raw
bytes (the actions', then rewards, flags and the group's infos; observations in gymnasium's
shared memory) rather than gymnasium's pickled tuples, whose numpy pickling cost more than the
pipe itself; other commands go pickled. Infos that share a layout (every step of an env
family) travel as numpy records (``vla_gym.vector_info``): a group's numbers as raw bytes,
each key's batch one slice of the joined records; the local envs' are put in columns while
the workers finish. A worker whose env raises (Ctrl-C included) sends the
error and ends, as in ``AsyncVectorEnv``; the parent re-raises it.

Results are bit-identical to ``SyncVectorEnv``'s for the same seeds and actions (observations,
rewards, terminations, truncations, infos with gymnasium's masks and dtypes, the instruction
batch as a tuple of str), and seeding follows gymnasium's (``seed=s`` gives env ``i`` seed
``s + i``). ``vector_kwargs`` for async mode may add:

  ``local_envs``  envs stepped in the parent; default ``num_envs // cores`` (at least 1, at
                  most ``num_envs - 1``), i.e. one process's share of the envs.
                  ``local_envs=0`` gives plain ``AsyncVectorEnv`` (one worker per env),
                  which is also what ``num_envs=1`` gets.
  ``workers``     worker processes for the other envs; default one per remaining core (at
                  least 1, at most one per env).
  ``spin_s``      how long the hybrid's parent and workers poll before blocking (default
                  ``SPIN_S``; 0 blocks at once, as ``AsyncVectorEnv`` does).

``copy``, ``observation_mode``, ``autoreset_mode``, ``context`` and ``daemon`` are
``AsyncVectorEnv``'s; the hybrid needs ``observation_mode="same"`` and shared memory, and
without ``local_envs`` set, other choices (or a custom ``worker``) get plain
``AsyncVectorEnv``. ``close(terminate=True)`` terminates the workers without waiting for
them, as ``AsyncVectorEnv``'s does.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import pickle
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import logger, spaces
from gymnasium.envs.registration import EnvSpec, VectorizeMode
from gymnasium.error import AlreadyPendingCallError, ClosedEnvironmentError, NoAsyncCallError
from gymnasium.vector.utils import (
    CloudpickleWrapper,
    batch_space,
    clear_mpi_env_vars,
    create_shared_memory,
    iterate,
    read_from_shared_memory,
    write_to_shared_memory,
)
from gymnasium.vector.vector_env import AutoresetMode

from vla_gym.vector_info import (
    InfoDecoder,
    InfoEncoder,
    InfoLayouts,
    InfoPart,
    InfoRows,
    batch_infos,
    empty_info_batch,
)

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

    def take_infos(self) -> InfoRows:
        infos, self._raw_infos = self._raw_infos, []
        return infos


class _LocalPart(_RecordInfoMixin, gym.vector.SyncVectorEnv):
    """The hybrid's in-process envs, and each worker's group. ``step`` leaves each env's
    observation as it came (``rows``, also what ``reset`` leaves there): the hybrid copies
    each straight into its output batch (a worker into shared memory), where
    ``SyncVectorEnv`` would first batch them into arrays of its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._raw_infos = []
        super().__init__(*args, **kwargs)

    @property
    def rows(self) -> list[Any]:
        return self._env_obs

    def step(self, actions: Any) -> tuple[list[Any], list[float], list[bool], list[bool]]:
        """``SyncVectorEnv.step``'s autoreset and results as lists, one item per env: the
        observations (``rows``), rewards, terminations and truncations."""
        mode = self.autoreset_mode
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED,
                        AutoresetMode.SAME_STEP):
            raise ValueError(f"Unexpected autoreset mode, {mode}")
        rewards, terminations, truncations = [], [], []
        for i, action in enumerate(_iterate_actions(self.action_space, actions)):
            env = self.envs[i]
            if mode == AutoresetMode.NEXT_STEP and self._autoreset_envs[i]:
                self._env_obs[i], info = env.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                # DISABLED assumes the caller reset finished envs (gymnasium asserts it too)
                assert mode != AutoresetMode.DISABLED or not self._autoreset_envs[i]
                self._env_obs[i], reward, terminated, truncated, info = env.step(action)
                if mode == AutoresetMode.SAME_STEP and (terminated or truncated):
                    self._raw_infos.append((i, {"final_obs": self._env_obs[i],
                                                "final_info": info}))
                    self._env_obs[i], info = env.reset()
            self._raw_infos.append((i, info))
            rewards.append(float(reward))
            terminations.append(bool(terminated))
            truncations.append(bool(truncated))
            self._autoreset_envs[i] = terminated or truncated
        return self._env_obs, rewards, terminations, truncations


def _iterate_actions(space: spaces.Space, actions: Any) -> Any:
    """gymnasium's ``iterate`` over a batch of actions; an array's rows directly."""
    if isinstance(actions, np.ndarray) and isinstance(space, _ARRAY_SPACES):
        return iter(actions)
    return iterate(space, actions)


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


# The messages between the hybrid and its workers. Parent to worker: a step, as the actions'
# raw bytes (pickling a 7-float array alone costs ~11 us against ~3 for its raw bytes, and
# both ends run right after a render, when such Python runs 2-3x slower), or any other
# command pickled. Worker to parent: _OK or _FAILED, then the payload. A pickle stream
# starts with b"\x80", never with _STEP.
_STEP = b"S"  # + the action's dtype str, ndim and shape, then its raw bytes
_OK = b"\x01"  # + the reply: a step's rewards, flags and infos (encode_step_result),
# anything else pickled
_FAILED = b"\x00"  # + the pickled (exception type, message, traceback text)


def encode_step(action: Any) -> bytes:
    """A step message: a numeric array as its dtype, shape and raw bytes (exactly the array
    the worker's envs get, dtype included), anything else pickled after ``_STEP`` + 0."""
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


def encode_step_result(rewards: Sequence[float], terminations: Sequence[bool],
                       truncations: Sequence[bool], infos: bytes) -> bytes:
    """A worker's reply to a step of its ``k`` envs (observations already in shared memory):
    ``k`` float64 rewards, ``k`` termination and ``k`` truncation bytes, then the group's
    infos (``InfoEncoder.encode``)."""
    k = len(rewards)
    return _OK + struct.pack(f"<{k}d{2 * k}?", *rewards, *terminations, *truncations) + infos


def decode_step_result(message: bytes, k: int, infos: InfoDecoder,
                       ) -> tuple[list[float], list[bool], list[bool], InfoPart]:
    """``encode_step_result``'s rewards, terminations, truncations and infos (decoded by the
    sending worker's ``infos``)."""
    values = struct.unpack_from(f"<{k}d{2 * k}?", message, 1)
    return (list(values[:k]), list(values[k:2 * k]), list(values[2 * k:]),
            infos.decode(memoryview(message)[1 + 10 * k:]))


def _error_message(exc: BaseException) -> bytes:
    """``_FAILED`` + what the parent needs to raise ``exc`` again (its type where it can be
    pickled, else RuntimeError)."""
    trace = traceback.format_exc()
    try:
        return _FAILED + pickle.dumps((type(exc), str(exc), trace))
    except Exception:
        return _FAILED + pickle.dumps((RuntimeError, f"{type(exc).__name__}: {exc}", trace))


def _rebuilt_error(kind: Any, text: str) -> BaseException:
    """The worker's exception, as its type built from its message where that works."""
    if isinstance(kind, type) and issubclass(kind, BaseException):
        try:
            return kind(text)
        except Exception:  # a type whose constructor wants more than a message
            pass
    return WorkerError(f"{getattr(kind, '__name__', kind)}: {text}")


class WorkerError(Exception):
    """Raised in the parent when a worker's env failed in a way its type cannot be rebuilt
    from (the worker's traceback is in the message)."""


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


def _group_worker(env_fns: CloudpickleWrapper, conn: Any, parent_conn: Any,
                  shared_memory: Any, offset: int, autoreset_mode: AutoresetMode,
                  spin_s: float) -> None:
    """A worker process: steps its group of envs (a ``_LocalPart``) on the parent's
    messages, writing their observations into rows ``offset ..`` of the shared memory.
    Any error (Ctrl-C included) is sent to the parent and ends the worker, as in
    gymnasium's workers."""
    parent_conn.close()
    envs = None
    try:
        envs = _LocalPart(list(env_fns.fn), copy=False, autoreset_mode=autoreset_mode)
        space = envs.single_observation_space
        write = _ObservationWriter(write_to_shared_memory)
        infos = InfoEncoder()

        def publish() -> None:
            for i, row in enumerate(envs.rows):
                write(space, offset + i, row, shared_memory)

        conn.send_bytes(_OK + pickle.dumps((space, envs.single_action_space)))
        while _serve_one(envs, conn, publish, infos, spin_s):
            pass
    except BaseException as exc:  # Ctrl-C too: the parent hears of it
        try:
            conn.send_bytes(_error_message(exc))
        except Exception:
            pass
    finally:
        if envs is not None:
            envs.close()
        conn.close()


def _serve_one(envs: _LocalPart, conn: Any, publish: Callable[[], None],
               infos: InfoEncoder, spin_s: float) -> bool:
    """Wait for the parent's next message and answer it; False after "close"."""
    _spin_until_readable((conn,), spin_s)
    message = conn.recv_bytes()
    if message[:1] == _STEP:
        _, rewards, terminations, truncations = envs.step(decode_step(message))
        publish()
        conn.send_bytes(encode_step_result(rewards, terminations, truncations,
                                           infos.encode(envs.take_infos(), len(rewards))))
        return True
    command, data = pickle.loads(message)
    reply: Any = None
    if command == "reset":
        envs.reset(**data)
        publish()
        reply = envs.take_infos()
    elif command == "call":
        name, args, kwargs = data
        reply = envs.call(name, *args, **kwargs)
    elif command == "set_attr":
        envs.set_attr(*data)
    elif command != "close":
        raise ValueError(f"unknown worker command {command!r}")
    conn.send_bytes(_OK + pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    return command != "close"


class _WorkerGroups:
    """The hybrid's remote envs: one spawned worker process per group of envs, each a
    ``_LocalPart`` stepped on raw-byte messages (see ``encode_step``), observations in
    gymnasium's shared memory (``observations``: one row per remote env, in order)."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], groups: int,
                 observation_space: spaces.Space, autoreset_mode: AutoresetMode,
                 context: str | None, spin_s: float, daemon: bool = True) -> None:
        ctx = mp.get_context(context)
        n = len(env_fns)
        self.sizes = [len(part) for part in np.array_split(np.arange(n), groups)]
        self.offsets = [sum(self.sizes[:g]) for g in range(groups)]
        self.spin_s = spin_s
        self.shared_memory = create_shared_memory(observation_space, n=n, ctx=ctx)
        self.observations = read_from_shared_memory(observation_space, self.shared_memory, n=n)
        self.parent_pipes: list[Any] = []
        self.processes: list[Any] = []
        self.info_decoders = [InfoDecoder() for _ in range(groups)]
        self._pending: str | None = None
        self.closed = False
        with clear_mpi_env_vars():
            for size, offset in zip(self.sizes, self.offsets, strict=True):
                parent, child = ctx.Pipe()
                process = ctx.Process(
                    target=_group_worker, daemon=daemon,
                    name=f"vla_gym-worker-{offset}-{offset + size - 1}",
                    args=(CloudpickleWrapper(tuple(env_fns[offset:offset + size])), child,
                          parent, self.shared_memory, offset, autoreset_mode, spin_s))
                self.parent_pipes.append(parent)
                self.processes.append(process)
                process.start()
                child.close()
        self._every_group = list(range(groups))
        self._pending, self._targets = "start", self._every_group
        self._target_pipes = list(self.parent_pipes)
        try:
            self.spaces = self._receive("start")  # (observation, action space) per group
        except BaseException:
            self.close_now()
            raise

    # -- messages --------------------------------------------------------------------------

    def _send(self, command: str, per_group: Sequence[Any],
              targets: Sequence[int] | None = None) -> None:
        """``command`` with one payload per group of ``targets`` (default: every group)."""
        if self.closed:
            raise ClosedEnvironmentError("the vector env's workers are closed")
        if self._pending is not None:
            raise AlreadyPendingCallError(
                f"calling `{command}` while waiting for a pending call to `{self._pending}` to "
                "complete", self._pending)
        targets = self._every_group if targets is None else list(targets)
        pipes = [self.parent_pipes[g] for g in targets]
        if None in pipes:
            raise ClosedEnvironmentError("a worker of this vector env died of an error raised "
                                         "earlier; close it and make a new one")
        for pipe, data in zip(pipes, per_group, strict=True):
            pipe.send_bytes(data if command == "step" else pickle.dumps(
                (command, data), protocol=pickle.HIGHEST_PROTOCOL))
        self._pending, self._targets, self._target_pipes = command, targets, pipes

    def _receive(self, command: str) -> list[Any]:
        """Each target worker's reply to ``command`` (step replies as raw messages). A
        worker's error closes its pipe and is raised once every target has replied."""
        if self._pending != command:
            raise NoAsyncCallError(f"no pending call to `{command}`", command)
        self.results_ready()
        replies, errors = [], []
        for g, pipe in zip(self._targets, self._target_pipes, strict=True):
            try:
                message = pipe.recv_bytes()
            except EOFError:
                message = _FAILED + pickle.dumps((WorkerError, f"worker {g} exited", ""))
            if message[:1] != _OK:
                errors.append(pickle.loads(message[1:]))
                pipe.close()
                self.parent_pipes[g] = None
                self.processes[g].join(timeout=5)
                replies.append(None)
            elif command == "step":
                replies.append(message)
            else:
                replies.append(pickle.loads(message[1:]))
        self._pending = None
        if errors:
            kind, text, trace = errors[0]
            logger.error("a vla_gym vector worker failed:\n%s", trace)
            raise _rebuilt_error(kind, text)
        return replies

    def results_ready(self) -> None:
        """Poll the pending call's pipes for up to ``spin_s`` s; the blocking wait comes
        after."""
        if self.spin_s > 0 and self._pending is not None:
            _spin_until_readable(self._target_pipes, self.spin_s)

    # -- commands --------------------------------------------------------------------------

    def send_steps(self, actions: Sequence[Any]) -> None:
        """One batch of actions per group."""
        self._send("step", [encode_step(a) for a in actions])

    def receive_steps(self) -> tuple[list[float], list[bool], list[bool],
                                     list[tuple[int, InfoPart]]]:
        """Rewards, terminations, truncations (one per remote env) and (first remote env,
        infos) per group of ``send_steps``."""
        parts = [decode_step_result(message, size, decoder) for message, size, decoder in
                 zip(self._receive("step"), self.sizes, self.info_decoders, strict=True)]
        infos = [(offset, part[3]) for part, offset in zip(parts, self.offsets, strict=True)]
        if len(parts) == 1:
            return (*parts[0][:3], infos)
        return (*([x for part in parts for x in part[j]] for j in range(3)), infos)

    def send_resets(self, per_group: Sequence[dict[str, Any] | None]) -> None:
        """``SyncVectorEnv.reset`` keyword arguments per group; None leaves a group alone."""
        targets = [g for g, kwargs in enumerate(per_group) if kwargs is not None]
        self._send("reset", [per_group[g] for g in targets], targets)

    def receive_resets(self) -> list[tuple[int, InfoPart]]:
        """(first remote env, info rows) per group of ``send_resets``."""
        return [(self.offsets[g], reply)
                for g, reply in zip(self._targets, self._receive("reset"), strict=True)]

    def send_calls(self, name: str, args: tuple, kwargs: dict[str, Any]) -> None:
        self._send("call", [(name, args, kwargs)] * len(self.parent_pipes))

    def receive_calls(self) -> list[Any]:
        """``name``'s value or result per remote env."""
        return [value for reply in self._receive("call") for value in reply]

    def set_attr(self, name: str, values: Sequence[Any]) -> None:
        self._send("set_attr", [(name, list(values[offset:offset + size]))
                                for offset, size in zip(self.offsets, self.sizes,
                                                        strict=True)])
        self._receive("set_attr")

    def wait_pending(self) -> None:
        """Collect a pending call's replies, dropping them and any error."""
        if self._pending is None:
            return
        try:
            self._receive(self._pending)
        except Exception:
            pass
        self._pending = None

    # -- closing ---------------------------------------------------------------------------

    def close(self, timeout: float | None = None, terminate: bool = False) -> None:
        """Ask each worker to close (after collecting a pending call) and wait ``timeout`` s
        for it; ``terminate`` (or a worker that does not answer) terminates them."""
        if self.closed:
            return
        try:
            if not terminate:
                self.wait_pending()
                live = [(g, p) for g, p in enumerate(self.parent_pipes) if p is not None]
                for _, pipe in live:
                    pipe.send_bytes(pickle.dumps(("close", None)))
                for _, pipe in live:
                    if pipe.poll(timeout):
                        pipe.recv_bytes()
                for g, _ in live:
                    self.processes[g].join(timeout)
        finally:
            self.close_now()

    def close_now(self) -> None:
        """Terminate the workers that are still there without a word to them."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for g, pipe in enumerate(self.parent_pipes):
            if pipe is not None:
                pipe.close()
                self.parent_pipes[g] = None
        for process in self.processes:
            process.join()
        self._pending = None
        self.closed = True


class HybridVectorEnv(LeanInfoMixin, gym.vector.VectorEnv):
    """Envs ``0 .. local_envs-1`` stepped in this process, the rest in spawned worker
    processes, each stepping a group of them (see the module docstring); batches as
    ``SyncVectorEnv``'s."""

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        local_envs: int = 1,
        workers: int | None = None,
        copy: bool = True,
        observation_mode: str = "same",
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        spin_s: float = SPIN_S,
        shared_memory: bool = True,
        context: str | None = None,
        daemon: bool = True,
        worker: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        num_envs = len(env_fns)
        if not isinstance(local_envs, (int, np.integer)) or not 1 <= local_envs < num_envs:
            raise ValueError(f"local_envs must be an integer in [1, num_envs - 1] = "
                             f"[1, {num_envs - 1}], got {local_envs!r}")
        remote = num_envs - int(local_envs)
        if workers is None:
            workers = default_workers(remote)
        if not isinstance(workers, (int, np.integer)) or not 1 <= workers <= remote:
            raise ValueError(f"workers must be an integer in [1, num_envs - local_envs] = "
                             f"[1, {remote}], got {workers!r}")
        _check_hybrid_options(observation_mode, shared_memory, worker, spin_s)
        self.num_envs = num_envs
        self.local_envs = int(local_envs)
        self.copy = copy
        self.spin_s = float(spin_s)
        self._local = _LocalPart(env_fns[:self.local_envs], copy=False,
                                 autoreset_mode=autoreset_mode)
        self._local_infos = InfoLayouts()
        try:
            # After the local envs: the workers' shared memory is laid out for the
            # observation space the local envs give.
            self._remote = _WorkerGroups(env_fns[self.local_envs:], int(workers),
                                         self._local.single_observation_space,
                                         self._local.autoreset_mode, context, self.spin_s,
                                         daemon)
            for observation_space, action_space in self._remote.spaces:
                if observation_space != self._local.single_observation_space:
                    raise RuntimeError("HybridVectorEnv: the local and remote envs' "
                                       "observation spaces differ")
                if action_space != self._local.single_action_space:
                    raise RuntimeError("HybridVectorEnv: the local and remote envs' action "
                                       "spaces differ")
        except BaseException:
            if hasattr(self, "_remote"):
                self._remote.close(terminate=True)
            self._local.close()
            self.closed = True  # all closed here; the finaliser has nothing left to close
            raise
        self.workers = int(workers)
        self.autoreset_mode = self._local.autoreset_mode
        self.metadata = dict(self._local.metadata)
        self.render_mode = self._local.render_mode
        self.single_observation_space = self._local.single_observation_space
        self.single_action_space = self._local.single_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        # The workers' rows are always self._remote.observations (shared memory); the local
        # envs' are their last observations, one per env (``_LocalPart.rows``).

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
        mask = None
        if options is not None and "reset_mask" in options:
            options = dict(options)
            mask = options.pop("reset_mask")
            self._check_reset_mask(mask)
        parts = []  # SyncVectorEnv.reset's arguments for the local part, then each group
        for start, stop in self._part_bounds():
            if mask is not None and not mask[start:stop].any():
                parts.append(None)  # nothing to reset there
                continue
            part_options = (options if mask is None
                            else {**(options or {}), "reset_mask": mask[start:stop]})
            parts.append({"seed": list(seed[start:stop]), "options": part_options})
        remote = any(p is not None for p in parts[1:])
        if remote:
            self._remote.send_resets(parts[1:])
        try:
            if parts[0] is not None:
                self._local.reset(**parts[0])
        except BaseException as exc:
            if remote:
                self._abandon_remote(exc)
            raise
        obs, local_infos = self._local_half()
        return self._remote_half(obs, local_infos,
                                 self._remote.receive_resets() if remote else [])

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, Any]]:
        self._assert_is_running()
        local_actions, remote_actions = _split(self.action_space, actions, self.local_envs,
                                               self.num_envs)
        self._remote.send_steps([_rows(self.action_space, remote_actions, offset, size)
                                 for offset, size in zip(self._remote.offsets,
                                                         self._remote.sizes, strict=True)])
        try:
            local = self._local.step(local_actions)
        except BaseException as exc:
            self._abandon_remote(exc)
            raise
        obs, local_infos = self._local_half()  # while the workers finish
        rewards, terminations, truncations, remote_infos = self._remote.receive_steps()
        obs, infos = self._remote_half(obs, local_infos, remote_infos)
        return (obs, np.array(local[1] + rewards, dtype=np.float64),
                np.array(local[2] + terminations, dtype=np.bool_),
                np.array(local[3] + truncations, dtype=np.bool_), infos)

    def _part_bounds(self) -> list[tuple[int, int]]:
        """[start, stop) of the local envs, then of each worker's group."""
        k = self.local_envs
        return [(0, k), *((k + offset, k + offset + size) for offset, size in
                          zip(self._remote.offsets, self._remote.sizes, strict=True))]

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

    def _abandon_remote(self, exc: BaseException) -> None:
        """After the local part failed: collect the workers' pending results (dropping them
        and any error of theirs) so the env stays usable; on Ctrl-C leave them to ``close``."""
        if isinstance(exc, Exception):
            self._remote.wait_pending()
        self._local.take_infos()  # the failed step's partial rows

    def _local_half(self) -> tuple[Any, InfoPart]:
        """The batch's local rows: observations, in arrays for all envs, and the local envs'
        infos (in columns where they share a layout)."""
        return (_start_join(self.single_observation_space, self._local.rows, self.num_envs,
                            self.copy),
                self._local_infos.part(self._local.take_infos(), self.local_envs))

    def _remote_half(self, obs: Any, local_infos: InfoPart,
                     remote_infos: list[tuple[int, InfoPart]]) -> tuple[Any, dict[str, Any]]:
        """The workers' rows added to ``_local_half``'s observations, and every env's infos
        (``remote_infos``: (first remote env, infos) per group)."""
        k = self.local_envs
        parts = [(0, local_infos), *((k + start, part) for start, part in remote_infos)]
        return (_end_join(self.single_observation_space, obs, self._remote.observations, k,
                          self.copy), batch_infos(parts, self.num_envs, self._add_info))

    # -- sub-env access --------------------------------------------------------------------

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        self._assert_is_running()
        if name in ("reset", "step", "close", "_setattr", "_check_spaces"):
            # AsyncVectorEnv's refusal, raised here so no worker dies of it
            raise ValueError(f"Trying to call function `{name}` with `call`, use `{name}` "
                             "directly instead.")
        self._remote.send_calls(name, args, kwargs)
        try:
            local = self._local.call(name, *args, **kwargs)
        except BaseException as exc:
            self._abandon_remote(exc)
            raise
        return tuple(local) + tuple(self._remote.receive_calls())

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
                # the workers still have to go, whatever stopped their orderly close
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
                f"local_envs={self.local_envs}, workers={self.workers})")


def _split(space: spaces.Space, batch: Any, k: int, n: int) -> tuple[Any, Any]:
    """A batch of ``n`` actions of ``space`` cut into its first ``k`` rows and the rest."""
    return _rows(space, batch, 0, k, n), _rows(space, batch, k, n - k, n)


def _check_hybrid_options(observation_mode: str, shared_memory: bool, worker: Any,
                          spin_s: float) -> None:
    """``AsyncVectorEnv`` options the hybrid cannot honour, refused with what to use."""
    if observation_mode != "same":
        raise ValueError("HybridVectorEnv supports observation_mode='same' only, got "
                         f"{observation_mode!r}")
    if not shared_memory:
        raise ValueError("HybridVectorEnv's workers return observations in shared memory; "
                         "use AsyncVectorEnv for shared_memory=False")
    if worker is not None:
        raise ValueError("HybridVectorEnv runs its own worker; use AsyncVectorEnv for a "
                         "custom one")
    if spin_s < 0:
        raise ValueError(f"spin_s must be >= 0, got {spin_s!r}")


def _rows(space: spaces.Space, batch: Any, start: int, size: int, n: int | None = None) -> Any:
    """Rows ``start .. start+size-1`` of a batch of ``space`` (views where it is arrays);
    with ``n``, every part of the batch must have ``n`` rows."""
    if isinstance(space, spaces.Dict):
        return {key: _rows(sub, batch[key], start, size, n) for key, sub in space.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_rows(sub, item, start, size, n)
                     for sub, item in zip(space.spaces, batch, strict=True))
    if not isinstance(batch, np.ndarray) and isinstance(space, _ARRAY_SPACES):
        batch = np.asarray(batch)
    if n is not None and len(batch) != n:
        raise ValueError(f"expected a batch of {n} actions, got {len(batch)}")
    return batch[start:start + size]


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


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def default_workers(remote_envs: int) -> int:
    """Worker processes for ``remote_envs`` envs unless told: one per core left beside the
    calling process (at least 1, at most one per env). More processes than cores would
    take turns on them, each switch costing more than it saves."""
    return max(1, min(remote_envs, _cores() - 1))


def default_local_envs(num_envs: int) -> int:
    """Envs a ``HybridVectorEnv`` steps in the parent unless told: ``num_envs // cores``, at
    least 1 and at most ``num_envs - 1``, so each process has about as many envs as there
    are cores for; 0 (no hybrid) for a single env."""
    if num_envs < 2:
        return 0
    return min(num_envs - 1, max(1, num_envs // _cores()))


def _make_async(env_fns: list[Callable[[], gym.Env]],
                kwargs: dict[str, Any]) -> gym.vector.VectorEnv:
    """A ``HybridVectorEnv``, or ``LeanAsyncVectorEnv`` where it cannot or should not be."""
    kwargs = dict(kwargs)
    local = kwargs.pop("local_envs", None)
    spin_s = kwargs.pop("spin_s", SPIN_S)
    workers = kwargs.pop("workers", None)
    if local is None:
        local = default_local_envs(len(env_fns))
        if (kwargs.get("observation_mode", "same") != "same" or kwargs.get("worker")
                or not kwargs.get("shared_memory", True)):
            local = 0  # the hybrid's limits (module docstring): plain workers instead
    if local == 0:
        if workers is not None:
            raise ValueError("vector_kwargs 'workers' sets the hybrid's worker processes; "
                             "without local envs (AsyncVectorEnv) each env has its own")
        return LeanAsyncVectorEnv(env_fns, **kwargs)
    return HybridVectorEnv(env_fns, local_envs=local, workers=workers, spin_s=spin_s, **kwargs)


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
