"""Choose an OpenGL backend for MuJoCo before mujoco is imported.

MuJoCo reads ``MUJOCO_GL`` once, at import time. On a machine with no display we want EGL
(Mesa llvmpipe works on a CPU-only box) and fall back to OSMesa; if neither library exists the
user gets an install hint instead of an opaque GL error. This module must not import mujoco.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

INSTALL_HINT = (
    "No headless OpenGL library found. Install EGL (Debian/Ubuntu: `apt-get install libegl1 "
    "libgl1-mesa-dri`) or OSMesa (`apt-get install libosmesa6`), or set MUJOCO_GL=glfw with a "
    "display."
)


def _has_library(*names: str) -> bool:
    return any(ctypes.util.find_library(name) for name in names)


def choose_backend() -> str | None:
    """Return the backend to use given the environment, without side effects.

    An explicit ``MUJOCO_GL`` always wins; with a display we leave MuJoCo's default (GLFW).
    """
    explicit = os.environ.get("MUJOCO_GL")
    if explicit:
        return explicit
    if sys.platform == "darwin" or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    if _has_library("EGL"):
        return "egl"
    if _has_library("OSMesa"):
        return "osmesa"
    return None


def configure() -> str | None:
    """Set ``MUJOCO_GL`` (and PyOpenGL's platform) for headless use; return the backend chosen."""
    backend = choose_backend()
    if backend and "mujoco" not in sys.modules:
        os.environ["MUJOCO_GL"] = backend
        if backend in ("egl", "osmesa"):
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    if backend in ("egl", "osmesa"):
        # Mesa's software rasteriser splits each frame over worker threads; at policy image
        # sizes the hand-off costs more than it saves (measured: 96 px frames render ~2x
        # faster on the calling thread) and the threads fight vector-env workers for cores.
        # Ignored by GPU drivers.
        os.environ.setdefault("LP_NUM_THREADS", "0")
    return backend


def describe_problem() -> str | None:
    """A human explanation when headless rendering cannot work, else None."""
    if os.environ.get("MUJOCO_GL") or os.environ.get("DISPLAY") or sys.platform == "darwin":
        return None
    if _has_library("EGL") or _has_library("OSMesa"):
        return None
    return INSTALL_HINT
