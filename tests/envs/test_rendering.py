"""Renderers on one thread share one GL context (``rendering._ThreadGL``, EGL only)."""

from __future__ import annotations

import os
import threading

import gymnasium as gym
import numpy as np
import pytest

import vla_gym  # noqa: F401
from vla_gym.envs import rendering

pytestmark = pytest.mark.skipif(os.environ.get("MUJOCO_GL") != "egl",
                                reason="the shared context is made for EGL only")


def _reference_frame(env: gym.Env, camera: str) -> np.ndarray:
    base = env.unwrapped
    reference = base.renderers.obs_renderer().mujoco_renderer
    reference.update_scene(base.data, camera=camera)
    return reference.render()


def _shared_of(env: gym.Env) -> rendering._ThreadGL | None:
    return env.unwrapped.renderers.obs_renderer()._fast._shared


def on_fresh_thread(test):
    """Run ``test`` on a new thread, whose context no env of another test can hold."""
    def run(*args, **kwargs) -> None:
        errors: list[BaseException] = []

        def body() -> None:
            try:
                test(*args, **kwargs)
            except BaseException as exc:  # re-raised on the test's thread
                errors.append(exc)

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]

    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


@on_fresh_thread
def test_envs_on_one_thread_share_a_context_and_draw_mujocos_bytes():
    """Two envs (and a video renderer of another size) in one context, stepped in turn:
    each frame is the bytes of MuJoCo's own renderer, which binds its own buffer."""
    assert getattr(rendering._ThreadGL._local, "gl", None) is None
    pick = gym.make("vla_gym/TabletopPick-v0", image_size=48, cameras=("main", "wrist"),
                    render_mode="rgb_array", render_size=64)
    nav = gym.make("vla_gym/NavGoTo-v0", image_size=40)
    pick.reset(seed=3)
    nav.reset(seed=4)
    shared = _shared_of(pick)
    assert shared is not None and _shared_of(nav) is shared
    assert shared.users == 2
    for _ in range(3):
        obs = pick.step(pick.action_space.sample())[0]
        assert pick.render().shape == (64, 64, 3)  # the video renderer joins the context
        nav_obs = nav.step(nav.action_space.sample())[0]
        np.testing.assert_array_equal(obs["image"], _reference_frame(pick, "main"))
        np.testing.assert_array_equal(obs["wrist_image"], _reference_frame(pick, "wrist"))
        np.testing.assert_array_equal(nav_obs["image"], _reference_frame(
            nav, nav.unwrapped.observation_camera))
    assert shared.users == 3
    pick.close()
    assert shared.users == 1 and rendering._ThreadGL._local.gl is shared
    # the renderer left draws on after the others freed their GL objects
    obs = nav.step(nav.action_space.sample())[0]
    np.testing.assert_array_equal(obs["image"], _reference_frame(
        nav, nav.unwrapped.observation_camera))
    nav.close()
    assert shared.users == 0 and rendering._ThreadGL._local.gl is None


@on_fresh_thread
def test_each_thread_has_its_own_context():
    here = gym.make("vla_gym/TabletopPick-v0", image_size=32)
    here.reset(seed=0)
    seen: dict[str, object] = {}

    def work() -> None:
        env = gym.make("vla_gym/TabletopPick-v0", image_size=32)
        obs = env.reset(seed=0)[0]
        seen["shared"] = _shared_of(env)
        seen["same_bytes"] = np.array_equal(obs["image"], _reference_frame(env, "main"))
        seen["image"] = obs["image"]
        env.close()
        seen["freed"] = getattr(rendering._ThreadGL._local, "gl", None) is None

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen["shared"] is not None and seen["shared"] is not _shared_of(here)
    assert seen["same_bytes"] and seen["freed"]
    # same seed, same scene: the other thread's context drew the same frame
    np.testing.assert_array_equal(seen["image"], here.reset(seed=0)[0]["image"])
    here.close()


@on_fresh_thread
def test_a_close_from_another_thread_frees_nothing_there():
    """GL objects live in their thread's context: a close elsewhere must not free them
    through whatever context is current there (nor leave that to the MjrContext's
    destructor); the owner's renderers draw on."""
    owner = gym.make("vla_gym/TabletopPick-v0", image_size=32)
    other = gym.make("vla_gym/TabletopPick-v0", image_size=32)
    owner.reset(seed=1)
    other.reset(seed=2)
    shared = _shared_of(owner)
    stranded = len(rendering._STRANDED)
    thread = threading.Thread(target=other.close)
    thread.start()
    thread.join()
    assert shared.users == 1
    assert len(rendering._STRANDED) == stranded + 1  # kept, not freed through another context
    obs = owner.step(owner.action_space.sample())[0]
    np.testing.assert_array_equal(obs["image"], _reference_frame(owner, "main"))
    owner.close()
    assert rendering._ThreadGL._local.gl is None


def test_the_shared_context_can_be_turned_off(monkeypatch):
    # set before the thread starts: the variable is read when a renderer is made
    monkeypatch.setenv("VLA_GYM_SHARED_GL", "0")
    on_fresh_thread(_turned_off)()


def _turned_off():
    env = gym.make("vla_gym/TabletopPick-v0", image_size=32)
    obs = env.reset(seed=5)[0]
    assert _shared_of(env) is None
    assert getattr(rendering._ThreadGL._local, "gl", None) is None
    np.testing.assert_array_equal(obs["image"], _reference_frame(env, "main"))
    env.close()


@on_fresh_thread
def test_a_renderer_collected_unclosed_frees_in_its_own_context():
    """An env dropped without ``close()`` while another GL context is current (here a
    ``mujoco.Renderer`` of Pusher-v5's textured model) frees its GL objects in the shared
    context, not in the current one, whose own objects carry the same names."""
    import gc

    import mujoco

    pusher = gym.make("Pusher-v5")
    pusher.reset(seed=0)
    model, data = pusher.unwrapped.model, pusher.unwrapped.data
    witness = mujoco.Renderer(model, height=32, width=32)

    def witness_frame() -> np.ndarray:
        witness.update_scene(data)
        return witness.render()

    before = witness_frame()
    env = gym.make("vla_gym/TabletopPick-v0", image_size=32)
    env.reset(seed=0)
    shared = _shared_of(env)
    np.testing.assert_array_equal(witness_frame(), before)  # the witness's context is current
    del env
    gc.collect()
    assert shared.users == 0
    np.testing.assert_array_equal(witness_frame(), before)
    witness.close()
    pusher.close()
