"""make_vec's lean vector envs: the same batches as gymnasium's, the same errors."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.spaces.utils import flatten
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import (
    batch_space,
    create_shared_memory,
    read_from_shared_memory,
    write_to_shared_memory,
)
from gymnasium.vector.vector_env import VectorEnv

import vla_gym
from vla_gym.envs.base import instruction_space
from vla_gym.vector import HybridVectorEnv, LeanAsyncVectorEnv, LeanInfoMixin, LeanSyncVectorEnv
from vla_gym.vector_info import InfoDecoder, InfoEncoder

MULTI = "vla_gym/TabletopMultiTask-v0"  # info keys differ between families: masks matter
SMALL = {"image_size": 32}


def assert_same(a, b, path="") -> None:
    """Equal values, types, dtypes and shapes, recursively (bit-identical arrays)."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.dtype == object:  # e.g. SAME_STEP's final_obs: one observation dict per env
            for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
                assert_same(x, y, f"{path}[{i}]")
        else:
            assert a.tobytes() == b.tobytes(), path
    else:
        assert a == b or (a != a and b != b), path


def _run(vec: gym.vector.VectorEnv, steps: int) -> list:
    rng = np.random.default_rng(0)
    out = [vec.reset(seed=7)]
    for _ in range(steps):
        out.append(vec.step(rng.uniform(-1, 1, vec.action_space.shape).astype(np.float32)))
    vec.close()
    return out


def test_make_vec_builds_lean_classes_with_gymnasiums_spec():
    ours = vla_gym.make_vec(MULTI, num_envs=2, **SMALL)
    theirs = gym.make_vec(MULTI, num_envs=2, vectorization_mode="sync", **SMALL)
    assert isinstance(ours, LeanSyncVectorEnv) and isinstance(ours, gym.vector.SyncVectorEnv)
    assert ours.spec == theirs.spec
    ours.close(), theirs.close()


def test_sync_batches_match_gymnasium_sync_vector_env():
    """Seeded run past episode ends (autoreset) with families whose info keys differ."""
    ours = vla_gym.make_vec(MULTI, num_envs=3, **SMALL)
    theirs = gym.make_vec(MULTI, num_envs=3, vectorization_mode="sync", **SMALL)
    assert_same(_run(ours, 180), _run(theirs, 180))


def test_async_batches_match_sync():
    ours = vla_gym.make_vec(MULTI, num_envs=2, vectorization_mode="async",
                            vector_kwargs={"local_envs": 0}, **SMALL)
    assert isinstance(ours, LeanAsyncVectorEnv)
    assert_same(_run(ours, 40), _run(vla_gym.make_vec(MULTI, num_envs=2, **SMALL), 40))


class _Gym(VectorEnv):
    num_envs = 3


class _Lean(LeanInfoMixin, _Gym):
    pass


def test_add_info_matches_gymnasium_for_every_value_kind():
    infos = [
        {"i": 1, "f": 0.5, "b": True, "f32": np.float32(2), "a": np.arange(3.0), "s": "x",
         "n": None, "d": {"inner": 1.0}, "final_obs": {"k": np.ones(2)}},
        {"f": 1.5, "only_here": np.int64(4)},
        {"i": 2.7, "b": False, "a": np.ones(3), "d": {"inner": 3.0, "more": "y"}},
    ]
    merged = {}, {}
    for env_num, info in enumerate(infos):
        _Gym()._add_info(merged[0], info, env_num)
        _Lean()._add_info(merged[1], info, env_num)
    assert_same(merged[1], merged[0])


def test_bad_mode_action_and_closed_env_raise_as_before():
    with pytest.raises(ValueError, match="vectorization mode"):
        vla_gym.make_vec(MULTI, num_envs=2, vectorization_mode="threads")
    vec = vla_gym.make_vec(MULTI, num_envs=2, **SMALL)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        vec.step(np.full((2, 7), np.nan, np.float32))
    vec.close()
    async_vec = vla_gym.make_vec(MULTI, num_envs=2, vectorization_mode="async",
                                 vector_kwargs={"local_envs": 0}, **SMALL)
    async_vec.close()
    with pytest.raises(gym.error.ClosedEnvironmentError):
        async_vec.step(np.zeros((2, 7), np.float32))


def test_instruction_buffer_round_trips_and_follows_writes():
    space = instruction_space()
    buffer = create_shared_memory(space, n=2, ctx=mp.get_context("spawn"))
    batch = read_from_shared_memory(space, buffer, n=2)
    for text in ("pick up the red cube.", "push the ball left of the bowl, please!"):
        write_to_shared_memory(space, 0, text, buffer)
        write_to_shared_memory(space, 1, text[::-1], buffer)
        assert tuple(batch) == (text, text[::-1]) == batch[:] and batch[-1] == text[::-1]
        np.testing.assert_array_equal(space.codes(text), flatten(space, text))


# -- HybridVectorEnv: async mode's parent-and-workers vector env ----------------------------

PICK = "vla_gym/TabletopPick-v0"  # 100-step time limit: truncations within a short run


def _hybrid(env_id=MULTI, num_envs=3, local_envs=1, **vector_kwargs):
    vec = vla_gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="async",
                           vector_kwargs={"local_envs": local_envs, **vector_kwargs}, **SMALL)
    assert isinstance(vec, HybridVectorEnv) and vec.local_envs == local_envs
    return vec


def _run_disabled(vec: gym.vector.VectorEnv, steps: int) -> list:
    """The rollout/collect loop: autoreset off, ended envs reset by mask with list seeds."""
    rng = np.random.default_rng(1)
    out = [vec.reset(seed=[11 * i for i in range(vec.num_envs)])]
    next_seed = 100
    for t in range(steps):
        result = vec.step(rng.uniform(-1, 1, vec.action_space.shape).astype(np.float32))
        out.append(result)
        ended = np.logical_or(result[2], result[3])
        if t in (30, 50, 70):  # stagger the episodes: masks that leave some envs running
            ended[(t - 30) // 20 % vec.num_envs] = True
        if ended.any():
            seeds = [next_seed + i if ended[i] else None for i in range(vec.num_envs)]
            next_seed += vec.num_envs
            out.append(vec.reset(seed=seeds, options={"reset_mask": ended.copy()}))
    out.append(vec.call("np_random_seed"))
    vec.close()
    return out


def test_async_mode_is_hybrid_for_two_or_more_envs():
    vec = vla_gym.make_vec(PICK, num_envs=2, vectorization_mode="async", **SMALL)
    assert isinstance(vec, HybridVectorEnv) and vec.local_envs == 1
    assert vec.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    assert vec.single_observation_space == gym.make(PICK, **SMALL).observation_space
    assert vec.observation_space == batch_space(vec.single_observation_space, 2)
    assert vec.action_space.shape == (2, 7) and vec.spec.kwargs["vectorization_mode"] == "async"
    vec.close()
    for num_envs, vector_kwargs in ((1, {}), (2, {"local_envs": 0}),
                                    (2, {"shared_memory": False})):  # plain workers
        vec = vla_gym.make_vec(PICK, num_envs=num_envs, vectorization_mode="async",
                               vector_kwargs=vector_kwargs, **SMALL)
        assert type(vec) is LeanAsyncVectorEnv
        vec.close()
    with pytest.raises(ValueError, match="shared memory"):
        vla_gym.make_vec(PICK, num_envs=2, vectorization_mode="async",
                         vector_kwargs={"local_envs": 1, "shared_memory": False}, **SMALL)
    for bad in (2, -1):
        with pytest.raises(ValueError, match="local_envs"):
            vla_gym.make_vec(PICK, num_envs=2, vectorization_mode="async",
                             vector_kwargs={"local_envs": bad}, **SMALL)


def test_hybrid_matches_sync_with_autoreset():
    """Seeded run past time limits (Pick) with default NEXT_STEP autoreset."""
    ours = _run(_hybrid(PICK, num_envs=2), 230)
    theirs = _run(vla_gym.make_vec(PICK, num_envs=2, **SMALL), 230)
    assert sum(step[3].sum() for step in theirs[1:]) >= 4  # episodes ended by the time limit
    assert_same(ours, theirs)
    assert type(ours[0][0]["instruction"]) is tuple


def test_hybrid_matches_sync_with_differing_info_keys_and_two_local_envs():
    assert_same(_run(_hybrid(num_envs=4, local_envs=2), 60),
                _run(vla_gym.make_vec(MULTI, num_envs=4, **SMALL), 60))


def test_hybrid_matches_sync_with_autoreset_disabled_and_masked_resets():
    disabled = {"autoreset_mode": AutoresetMode.DISABLED}
    ours = _hybrid(PICK, num_envs=3, **disabled)
    assert ours.metadata["autoreset_mode"] is AutoresetMode.DISABLED
    theirs = vla_gym.make_vec(PICK, num_envs=3, vector_kwargs=disabled, **SMALL)
    a, b = _run_disabled(ours, 220), _run_disabled(theirs, 220)
    assert len(a) >= 228  # masked resets: 3 forced, then each env's time limits apart
    assert_same(a, b)


def test_hybrid_workers_step_groups_of_envs_as_sync_does():
    """Three remote envs in two workers (groups of 2 and 1): masked resets that reach some
    groups and not others, the info keys of several task families, set/get by group."""
    disabled = {"autoreset_mode": AutoresetMode.DISABLED}
    ours = _hybrid(MULTI, num_envs=4, local_envs=1, workers=2, **disabled)
    assert ours.workers == 2 and ours._remote.sizes == [2, 1]
    assert [p.name for p in ours._remote.processes] == ["vla_gym-worker-0-1",
                                                         "vla_gym-worker-2-2"]
    ours.set_attr("note", ["a", "b", "c", "d"])
    assert ours.get_attr("note") == ("a", "b", "c", "d")
    theirs = vla_gym.make_vec(MULTI, num_envs=4, vector_kwargs=disabled, **SMALL)
    assert_same(_run_disabled(ours, 120), _run_disabled(theirs, 120))


def test_hybrid_defaults_to_one_worker_per_spare_core(monkeypatch):
    from vla_gym import vector

    monkeypatch.setattr(vector, "_cores", lambda: 2)
    assert [vector.default_workers(r) for r in (1, 4)] == [1, 1]
    assert [vector.default_local_envs(n) for n in (1, 2, 3, 8)] == [0, 1, 1, 4]
    monkeypatch.setattr(vector, "_cores", lambda: 8)
    assert [vector.default_workers(r) for r in (1, 3, 7, 14)] == [1, 3, 7, 7]
    with pytest.raises(ValueError, match=r"workers must be an integer .* = \[1, 2\], got 3"):
        _hybrid(PICK, num_envs=3, local_envs=1, workers=3)
    with pytest.raises(ValueError, match="workers"):
        vla_gym.make_vec(PICK, num_envs=2, vectorization_mode="async",
                         vector_kwargs={"local_envs": 0, "workers": 1}, **SMALL)


def test_hybrid_call_render_get_and_set_attr_match_sync():
    kwargs = {"image_size": 32, "render_mode": "rgb_array"}
    ours = vla_gym.make_vec(PICK, num_envs=3, vectorization_mode="async", **kwargs)
    theirs = vla_gym.make_vec(PICK, num_envs=3, **kwargs)
    for vec in (ours, theirs):
        vec.reset(seed=3)
        vec.step(np.full((3, 7), 0.5, np.float32))
    assert_same(ours.call("render"), theirs.call("render"))
    assert_same(ours.render(), theirs.render())
    assert ours.get_attr("np_random_seed") == theirs.get_attr("np_random_seed") == (3, 4, 5)
    assert ours.np_random_seed == (3, 4, 5)
    ours.set_attr("note", ["a", "b", "c"])
    assert ours.get_attr("note") == ("a", "b", "c")
    ours.set_attr("note", 1)
    assert ours.get_attr("note") == (1, 1, 1)
    with pytest.raises(ValueError, match="length equal"):
        ours.set_attr("note", [1, 2])
    with pytest.raises(ValueError, match="use `step` directly"):
        ours.call("step", np.zeros(7))
    assert ours.get_attr("note") == (1, 1, 1)  # no worker died of it
    ours.close(), theirs.close()


def test_hybrid_errors_match_sync_and_close_works():
    vec = _hybrid(num_envs=2)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        vec.step(np.full((2, 7), np.nan, np.float32))
    vec.close()
    assert vec.closed
    with pytest.raises(gym.error.ClosedEnvironmentError):
        vec.step(np.zeros((2, 7), np.float32))
    with pytest.raises(gym.error.ClosedEnvironmentError):
        vec.reset(seed=0)

    vec = _hybrid(num_envs=2)
    with pytest.raises(ValueError, match="length must match"):
        vec.reset(seed=[1, 2, 3])
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="batch of 2 actions"):
        vec.step(np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="at least one True"):
        vec.reset(options={"reset_mask": np.zeros(2, bool)})
    with pytest.raises(TypeError, match="dtype=np.bool_"):
        vec.reset(options={"reset_mask": np.zeros(2, int)})
    obs, *_ = vec.step(np.zeros((2, 7), np.float32))  # still usable after refused input
    assert obs["image"].shape == (2, 32, 32, 3)
    vec.close()
    vec.close()  # twice is fine


def test_hybrid_close_terminate_after_ctrl_c():
    """Ctrl-C in the parent's own env step, workers mid-step: ``close(terminate=True)``."""
    vec = _hybrid(num_envs=3)
    vec.reset(seed=0)

    def interrupted(action):
        raise KeyboardInterrupt

    vec._local.envs[0].step = interrupted
    with pytest.raises(KeyboardInterrupt):
        vec.step(np.zeros((3, 7), np.float32))
    vec.close(terminate=True)
    assert vec.closed and not any(p.is_alive() for p in vec._remote.processes)


def test_hybrid_close_terminate_after_worker_saw_ctrl_c():
    """Ctrl-C reaches the spawned workers too (collect closes with ``terminate=True``)."""
    vec = _hybrid(num_envs=2)
    vec.reset(seed=0)
    worker = vec._remote.processes[0]
    os.kill(worker.pid, signal.SIGINT)
    worker.join(timeout=30)
    assert not worker.is_alive()
    vec.close(terminate=True)
    assert vec.closed


@pytest.mark.parametrize("action", [
    np.linspace(-1, 1, 7, dtype=np.float32),
    np.linspace(-1, 1, 7) / 3,  # float64 for a float32 space: the worker gets it unrounded
    np.arange(6, dtype=np.uint8).reshape(2, 3),
    np.arange(12.0).reshape(3, 4)[:, 1],  # not contiguous
    np.array([2, 0, 3]),  # MultiDiscrete's int64
    np.int64(4),  # Discrete: no array, pickled
])
def test_step_messages_round_trip_actions_and_results(action):
    from vla_gym.vector import decode_step, decode_step_result, encode_step, encode_step_result

    message = encode_step(action)
    assert message[:1] == b"S"  # never the start of a pickle stream (b"\x80")
    decoded = decode_step(message)
    assert type(decoded) is type(action) and np.asarray(decoded).dtype == action.dtype
    assert np.shape(decoded) == np.shape(action)
    assert np.asarray(decoded).tobytes() == np.asarray(action).tobytes()  # bit-exact
    if isinstance(decoded, np.ndarray):
        decoded[...] = 0  # the worker's copy, not a view of the message
        assert decode_step(message).tobytes() == np.ascontiguousarray(action).tobytes()

    rows = [(0, {"task": "pick", "target_pos": np.arange(3.0), "is_success": False}),
            (1, {"task": "push", "target_pos": np.ones(3), "is_success": True})]
    infos = InfoEncoder().encode(rows, 2)
    rewards, terminations, truncations, part = decode_step_result(
        encode_step_result([0.25, -1e-300], [True, False], [False, True], infos), 2,
        InfoDecoder())
    assert_same((rewards, terminations, truncations), ([0.25, -1e-300], [True, False],
                                                       [False, True]))
    assert_same(part.rows(), rows)


def test_hybrid_raises_an_error_from_a_worker_env_alone():
    """Only the worker's env gets a bad action: its error reaches the parent, as
    ``AsyncVectorEnv`` raises it, and the worker is shut down."""
    vec = _hybrid(num_envs=2)
    vec.reset(seed=0)
    actions = np.zeros((2, 7), np.float32)
    actions[1] = np.inf
    with pytest.raises(ValueError, match="finite"):
        vec.step(actions)
    assert vec._remote.parent_pipes[0] is None
    vec.close(terminate=True)
    assert vec.closed and not any(p.is_alive() for p in vec._remote.processes)


def test_hybrid_passes_float64_actions_unrounded():
    """The worker's env gets the caller's float64 actions as they are, like the parent's."""
    def run(vec):
        rng = np.random.default_rng(2)
        out = [vec.reset(seed=5)]
        out += [vec.step(rng.uniform(-1, 1, (2, 7)) / 3) for _ in range(20)]
        vec.close()
        return out

    assert_same(run(_hybrid(PICK, num_envs=2)), run(vla_gym.make_vec(PICK, num_envs=2, **SMALL)))


def test_hybrid_matches_sync_with_same_step_autoreset():
    """SAME_STEP: an ended env is reset within the step, its last observation and info going
    out as ``final_obs`` / ``final_info`` (the local part's own step loop does this)."""
    same = {"autoreset_mode": AutoresetMode.SAME_STEP}
    ours = _run(_hybrid(PICK, num_envs=2, **same), 230)
    theirs = _run(vla_gym.make_vec(PICK, num_envs=2, vector_kwargs=same, **SMALL), 230)
    finals = [step[4] for step in theirs[1:] if "final_obs" in step[4]]
    assert len(finals) >= 2 and all(info["_final_obs"].any() for info in finals)
    assert_same(ours, theirs)


@pytest.mark.parametrize("index", [0, 2])
def test_worker_observation_writer_writes_gymnasiums_bytes(index):
    from vla_gym.vector import _ObservationWriter

    env = gym.make(MULTI, cameras=("main", "wrist"), **SMALL)
    space = env.observation_space
    obs, _ = env.reset(seed=3)
    obs, *_ = env.step(env.action_space.sample())
    env.close()
    theirs, ours = create_shared_memory(space, 3), create_shared_memory(space, 3)
    writer = _ObservationWriter(write_to_shared_memory)
    for _ in range(2):  # the second write goes through the kept views
        write_to_shared_memory(space, index, obs, theirs)
        writer(space, index, obs, ours)
        for key in space:
            assert bytes(theirs[key].get_obj()) == bytes(ours[key].get_obj()), key
    read = read_from_shared_memory(space, ours, 3)
    np.testing.assert_array_equal(read["image"][index], obs["image"])
    assert read["instruction"][index] == obs["instruction"]
    # A value of the wrong shape goes to gymnasium's writer, and its error.
    bad = {**obs, "state": obs["state"][:-1]}
    with pytest.raises(ValueError):
        writer(space, index, bad, ours)


def test_worker_errors_come_back_as_their_type_or_a_worker_error():
    from vla_gym.vector import WorkerError, _rebuilt_error

    class NeedsTwo(Exception):
        def __init__(self, a, b):
            super().__init__(a, b)

    error = _rebuilt_error(ValueError, "action must be finite")
    assert type(error) is ValueError and str(error) == "action must be finite"
    assert type(_rebuilt_error(KeyboardInterrupt, "")) is KeyboardInterrupt
    for kind in (NeedsTwo, "not a type"):
        error = _rebuilt_error(kind, "boom")
        assert type(error) is WorkerError and "boom" in str(error)
    assert "NeedsTwo: boom" in str(_rebuilt_error(NeedsTwo, "boom"))


def test_hybrid_whose_worker_fails_to_start_raises_and_is_left_closed(monkeypatch):
    """A worker env that cannot be built: the parent raises its error, and the half-built
    vector env is closed (its finaliser has nothing left to close and raises nothing)."""
    import functools
    import gc
    import sys

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    fns = [functools.partial(gym.make, PICK, **SMALL),
           functools.partial(gym.make, "vla_gym/NoSuchEnv-v0")]
    with pytest.raises(Exception, match="NoSuchEnv"):
        HybridVectorEnv(fns, local_envs=1, context="spawn")
    gc.collect()
    assert unraisable == []
