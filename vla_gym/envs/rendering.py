"""Offscreen camera rendering with fast defaults.

MuJoCo's default offscreen quality (4x multisampling, a 4096 shadow map, reflections) costs
~35 ms a frame on a CPU renderer whatever the image size; with those three off the same scene
renders at 1000+ frames/s at 64-96 px. ``"fast"`` is therefore the default and ``"high"``
restores MuJoCo's look for videos and figures. Every frame also uses an offscreen buffer of
exactly the image size, fast frames skip haze, and envs leave parked (out-of-view) pooled
bodies out of the scene (``set_geoms_drawn``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from collections.abc import Sequence

import mujoco
import numpy as np

from vla_gym.types import RENDER_QUALITIES

_QUALITY = {
    # offsamples, shadowsize, shadows+reflections+haze on, mesh slices/stacks for curved
    # primitives
    "fast": (0, 0, False, (12, 6, 1)),
    "high": (4, 4096, True, (28, 16, 4)),
}


def check_quality(quality: str) -> str:
    if quality not in RENDER_QUALITIES:
        raise ValueError(f"render_quality must be one of {RENDER_QUALITIES}, got {quality!r}")
    return quality


def apply_quality(model: mujoco.MjModel, quality: str) -> None:
    """Set the model's offscreen rendering settings; must run before a renderer is created."""
    offsamples, shadowsize, _, (slices, stacks, quads) = _QUALITY[check_quality(quality)]
    model.vis.quality.offsamples = offsamples
    model.vis.quality.shadowsize = shadowsize
    # A software rasteriser pays per triangle: coarser spheres/cylinders halve frame time.
    model.vis.quality.numslices = slices
    model.vis.quality.numstacks = stacks
    model.vis.quality.numquads = quads


# MuJoCo's default visualisation options draw geom groups 0-2 only.
HIDDEN_GEOM_GROUP = 5


def set_geoms_drawn(model: mujoco.MjModel, geom_ids, drawn: bool,
                    compiled_groups: np.ndarray) -> None:
    """Draw ``geom_ids`` (in their compiled groups) or leave them out of every render.

    Pooled bodies parked off the table still cost a software rasteriser their draw calls:
    leaving them out made fast Pick/Nav frames 5-12% cheaper. Main-camera images are
    unchanged; the wrist camera had shown parked objects as a few far-off pixels.
    """
    model.geom_group[geom_ids] = compiled_groups[geom_ids] if drawn else HIDDEN_GEOM_GROUP


def _new_renderer(model: mujoco.MjModel, width: int, height: int) -> mujoco.Renderer:
    """A ``mujoco.Renderer`` whose offscreen buffer is exactly the image size.

    The buffer is sized from ``model.vis.global_`` (640x480 unless the model says otherwise);
    a 96 px frame rendered 5-10% faster from an image-sized one, with the same bytes.
    """
    with _offscreen_size(model, width, height):
        return mujoco.Renderer(model, height=height, width=width)


class CameraRenderer:
    """Renders named cameras of one model at one size and quality.

    Frames are the bytes ``mujoco.Renderer.update_scene`` + ``render`` give, drawn through
    MuJoCo's C calls directly (``_FramePath``): at policy image sizes the Python around
    ``mujoco.Renderer`` (a camera object and name lookup per frame, EGL's make-current through
    PyOpenGL, a flip in place and a copy) costs ~25-30 us of a ~450 us 96 px frame here.

    With EGL, every renderer a thread creates draws in that thread's one GL context
    (``_ThreadGL``) rather than a context of its own: switching contexts between the envs a
    process steps in turn cost ~60-80 us a 96 px frame on a CPU renderer (4 Pick envs
    stepped in turn: ~525 against ~470 us a frame). ``VLA_GYM_SHARED_GL=0`` gives each
    renderer its own context again. Either way a renderer draws only on the thread that
    created it, as a GL context is current on one thread at a time.
    """

    def __init__(
        self, model: mujoco.MjModel, width: int, height: int, quality: str = "fast"
    ) -> None:
        apply_quality(model, quality)
        self._model = model
        self.width, self.height, self.quality = width, height, quality
        self._renderer: mujoco.Renderer | None = None
        self._fast = _FramePath.shared(model, width, height) if _shares_gl() else None
        if self._fast is None:
            self._fast = _FramePath.of(self.mujoco_renderer, model)
        else:
            _set_effects(self._fast.scene, quality)

    @property
    def scene(self) -> mujoco.MjvScene:
        """The scene frames are drawn from (its flags hold the quality's effects)."""
        return self._fast.scene if self._fast is not None else self.mujoco_renderer.scene

    @property
    def mujoco_renderer(self) -> mujoco.Renderer:
        """A ``mujoco.Renderer`` of this model at this size and quality: the one frames come
        from where no shared context is used, else one made on first use (its own GL
        context), e.g. for checking frames against MuJoCo's own API."""
        if self._renderer is None:
            self._renderer = _new_renderer(self._model, self.width, self.height)
            _set_effects(self._renderer.scene, self.quality)
        return self._renderer

    def render(self, data: mujoco.MjData, camera: str | int) -> np.ndarray:
        """One RGB frame, uint8 (H, W, 3), freshly allocated."""
        if self._fast is not None:
            return self._fast.render(data, camera)
        renderer = self.mujoco_renderer
        renderer.update_scene(data, camera=camera)
        return renderer.render()

    def render_many(self, data: mujoco.MjData, cameras: Sequence[str]) -> list[np.ndarray]:
        return [self.render(data, cam) for cam in cameras]

    def close(self) -> None:
        fast, self._fast = getattr(self, "_fast", None), None
        if fast is not None:
            fast.close()
        renderer, self._renderer = getattr(self, "_renderer", None), None
        if renderer is not None:
            renderer.close()


def _set_effects(scene: mujoco.MjvScene, quality: str) -> None:
    effects = _QUALITY[quality][2]
    flags = scene.flags
    flags[mujoco.mjtRndFlag.mjRND_SHADOW] = effects
    flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = effects
    # Haze shades the horizon, which our cameras do not see: off, it changed no pixel of
    # the tabletop main and wrist or the navigation main camera, and saved 3-7% a frame.
    flags[mujoco.mjtRndFlag.mjRND_HAZE] = effects


def _shares_gl() -> bool:
    return (os.environ.get("MUJOCO_GL") == "egl"
            and os.environ.get("VLA_GYM_SHARED_GL", "1") != "0")


class _ThreadGL:
    """The GL context every renderer created on one thread of one process draws in, freed
    when the last of them closes (``acquire`` / ``release``)."""

    _local = threading.local()

    def __init__(self) -> None:
        self.pid, self.thread = os.getpid(), threading.get_ident()
        self.context = mujoco.GLContext(1, 1)  # surfaceless: frames go to each one's FBO
        self.make_current = _current_maker(self.context)
        self.users = 0

    @classmethod
    def acquire(cls) -> _ThreadGL:
        gl = getattr(cls._local, "gl", None)
        if gl is None or gl.pid != os.getpid():  # a forked child: the parent's is unusable
            gl = cls._local.gl = cls()
        gl.users += 1
        gl.make_current()
        return gl

    def is_home(self) -> bool:
        """Whether this is the thread (and process) the context belongs to."""
        return self.pid == os.getpid() and self.thread == threading.get_ident()

    def release(self) -> None:
        """One renderer fewer; the last one frees the context (on its own thread only)."""
        self.users -= 1
        if self.users == 0 and self.is_home():
            self.context.free()
            if getattr(self._local, "gl", None) is self:
                self._local.gl = None


class _FramePath:
    """``mujoco.Renderer``'s RGB frame in a few C calls: make current (skipped when already
    current), bind this renderer's offscreen buffer (where several share a context),
    ``mjv_updateScene``, ``mjr_render``, ``mjr_readPixels`` into a kept buffer.

    ``of`` borrows a ``mujoco.Renderer``'s scene, options and contexts (None, and the caller
    keeps that renderer's own path, where they are not there to borrow, e.g. another MuJoCo
    release or a GL backend other than EGL, OSMesa or GLFW); ``shared`` builds its own in the
    calling thread's shared GL context (``_ThreadGL``).
    """

    def __init__(self, model: mujoco.MjModel, scene: mujoco.MjvScene,
                 option: mujoco.MjvOption, rect: mujoco.MjrRect, context: mujoco.MjrContext,
                 make_current, shared: _ThreadGL | None = None) -> None:
        self._model = model
        self.scene = scene
        self._option = option
        self._rect = rect
        self._context = context
        self._make_current = make_current
        self._shared = shared
        self._buffer = np.empty((rect.height, rect.width, 3), np.uint8)
        self._cameras: dict[str | int, mujoco.MjvCamera] = {}
        self._all = int(mujoco.mjtCatBit.mjCAT_ALL)

    @classmethod
    def of(cls, renderer: mujoco.Renderer, model: mujoco.MjModel) -> _FramePath | None:
        needed = ("_scene_option", "_rect", "_mjr_context", "_gl_context")
        if not all(hasattr(renderer, name) for name in needed):
            return None
        gl = renderer._gl_context  # noqa: SLF001
        if gl is None:  # a backend that draws without flipping rows (e.g. Filament)
            return None
        return cls(model, renderer.scene, renderer._scene_option,  # noqa: SLF001
                   renderer._rect, renderer._mjr_context, _current_maker(gl))  # noqa: SLF001

    @classmethod
    def shared(cls, model: mujoco.MjModel, width: int, height: int) -> _FramePath:
        gl = _ThreadGL.acquire()
        try:
            with _offscreen_size(model, width, height):
                context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        except BaseException:
            gl.release()
            raise
        # MjvScene's default capacity, as mujoco.Renderer's
        return cls(model, mujoco.MjvScene(model, maxgeom=10_000), mujoco.MjvOption(),
                   mujoco.MjrRect(0, 0, width, height), context, gl.make_current, gl)

    def _camera(self, camera: str | int) -> mujoco.MjvCamera:
        cam = self._cameras.get(camera)
        if cam is None:
            cam_id = camera if isinstance(camera, int) else mujoco.mj_name2id(
                self._model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if not 0 <= cam_id < self._model.ncam:
                raise ValueError(f"no camera {camera!r} in the model")
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = cam_id
            self._cameras[camera] = cam
        return cam

    def render(self, data: mujoco.MjData, camera: str | int) -> np.ndarray:
        self._make_current()
        if self._shared is not None:  # the last renderer to draw may have bound its own
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        mujoco.mjv_updateScene(self._model, data, self._option, None, self._camera(camera),
                               self._all, self.scene)
        mujoco.mjr_render(self._rect, self.scene, self._context)
        mujoco.mjr_readPixels(self._buffer, None, self._rect, self._context)
        return self._buffer[::-1].copy()  # GL's rows run bottom-up

    def close(self) -> None:
        """Free what ``shared`` made (a borrowed renderer frees its own). GL objects can be
        freed only in their context, current on its own thread: from elsewhere (a garbage
        collection on another thread) the MjrContext is kept alive to the process's end, as
        its destructor would free GL names in whatever context is current there."""
        shared, self._shared = getattr(self, "_shared", None), None
        if shared is None:
            return
        if shared.is_home():
            shared.make_current()
            self._context.free()
        else:
            _STRANDED.append(self._context)
        shared.release()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: GL may already be gone
            pass


# MjrContexts closed away from their thread's context (see ``_FramePath.close``).
_STRANDED: list[mujoco.MjrContext] = []


@contextlib.contextmanager
def _offscreen_size(model: mujoco.MjModel, width: int, height: int):
    """The model's offscreen buffer size set to ``width`` x ``height`` for a context made
    meanwhile, and put back after (other renderers of the model read it too)."""
    vis = model.vis.global_
    saved = int(vis.offwidth), int(vis.offheight)
    vis.offwidth, vis.offheight = width, height
    try:
        yield
    finally:
        vis.offwidth, vis.offheight = saved


def _current_maker(gl_context):
    """A no-argument function making ``gl_context`` current. For EGL it asks libEGL directly
    which context is current and switches only when another one is (another renderer in the
    process may have switched); otherwise it is the context's own ``make_current``."""
    egl_context = getattr(gl_context, "_context", None)
    if os.environ.get("MUJOCO_GL") != "egl" or egl_context is None:
        return gl_context.make_current
    try:
        from mujoco import egl as mujoco_egl

        library = ctypes.CDLL(ctypes.util.find_library("EGL") or "libEGL.so.1")
        current = library.eglGetCurrentContext
        current.restype, current.argtypes = ctypes.c_void_p, []
        make = library.eglMakeCurrent
        make.restype, make.argtypes = ctypes.c_uint, [ctypes.c_void_p] * 4
        context = ctypes.cast(egl_context, ctypes.c_void_p).value
        display = ctypes.cast(mujoco_egl.EGL_DISPLAY, ctypes.c_void_p).value
    except (AttributeError, OSError, TypeError, ImportError):
        return gl_context.make_current
    if not context or not display:
        return gl_context.make_current

    def make_current() -> None:
        if current() != context and not make(display, None, None, context):
            raise RuntimeError("failed to make the EGL context current")

    return make_current


class EnvRenderers:
    """An env's two renderers, each made on first use: observations at ``image_size`` and
    ``render()`` frames (videos) at ``render_size``."""

    def __init__(self, model: mujoco.MjModel, image_size: int, render_size: int,
                 quality: str) -> None:
        self.model, self.image_size, self.render_size = model, image_size, render_size
        self.quality = check_quality(quality)
        self._obs: CameraRenderer | None = None
        self._video: CameraRenderer | None = None

    def obs_renderer(self) -> CameraRenderer:
        if self._obs is None:
            self._obs = CameraRenderer(self.model, self.image_size, self.image_size, self.quality)
        return self._obs

    def observe(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        return (self._obs or self.obs_renderer()).render(data, camera)

    def frame(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        if self._video is None:
            self._video = CameraRenderer(self.model, self.render_size, self.render_size,
                                         self.quality)
        return self._video.render(data, camera)

    def close(self) -> None:
        for renderer in (self._obs, self._video):
            if renderer is not None:
                renderer.close()
        self._obs = self._video = None


def renderer_info() -> dict[str, str]:
    """Backend and OpenGL renderer string of a throwaway context (for `vla-gym doctor`)."""
    import os

    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody/></mujoco>")
    renderer = mujoco.Renderer(model, 16, 16)
    try:
        renderer.render()
        info = {"backend": os.environ.get("MUJOCO_GL", "default")}
        try:
            from OpenGL import GL

            info["renderer"] = GL.glGetString(GL.GL_RENDERER).decode()
            info["version"] = GL.glGetString(GL.GL_VERSION).decode()
        except Exception as exc:  # PyOpenGL missing or no current context
            info["renderer"] = f"unknown ({type(exc).__name__})"
        return info
    finally:
        renderer.close()


class CameraProjection:
    """Where world points appear in one camera's image (see ``project_to_image``), with the
    camera's id and focal length looked up once: envs project the target every step."""

    def __init__(self, model: mujoco.MjModel, camera: str) -> None:
        cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam < 0:
            raise ValueError(f"no camera named {camera!r} in the model")
        self.camera_id = cam
        self.focal = 0.5 / np.tan(np.radians(model.cam_fovy[cam]) / 2)  # square images

    def __call__(self, data: mujoco.MjData, point: np.ndarray) -> np.ndarray:
        cam = self.camera_id
        # The point in the camera's frame, R^T (p - c), in plain floats: a dozen numpy calls
        # on 3-vectors cost more than the arithmetic, and this runs every step.
        r = data.cam_xmat[cam].tolist()
        cx, cy, cz = data.cam_xpos[cam].tolist()
        px, py, pz = np.asarray(point, float).tolist()
        dx, dy, dz = px - cx, py - cy, pz - cz
        # MuJoCo cameras look down their -z axis with +x right and +y up.
        depth = -(r[2] * dx + r[5] * dy + r[8] * dz)
        if depth <= 1e-6:
            return np.full(2, np.nan)
        scale = self.focal / depth
        return np.array([0.5 + scale * (r[0] * dx + r[3] * dy + r[6] * dz),
                         0.5 - scale * (r[1] * dx + r[4] * dy + r[7] * dz)])


def calibration_record(frame: str, pos: Sequence[float], rot: Sequence[float] | np.ndarray,
                       fovy: float) -> dict[str, object]:
    """A camera's calibration as envs report it and policies keep it: ``{"frame", "pos",
    "rot", "fovy"}``, ``pos`` in ``frame``, ``rot`` the camera's axes (MuJoCo's: it looks
    down its -z) as 9 numbers row-major, ``fovy`` its vertical field of view in degrees."""
    return {"frame": frame, "pos": [float(v) for v in pos],
            "rot": [float(v) for v in np.asarray(rot).flatten()], "fovy": float(fovy)}


def view_projections(model: mujoco.MjModel, cameras: dict[str, str],
                     ) -> tuple[tuple[str, CameraProjection], ...]:
    """(view, projection) per extra image view: ``cameras`` maps each view's observation key
    to its MuJoCo camera. The info keys they fill are ``types.pixel_label(view)``'s
    (``wrist_target_pixel``...)."""
    return tuple((view, CameraProjection(model, camera)) for view, camera in cameras.items())


def project_to_image(model: mujoco.MjModel, data: mujoco.MjData, camera: str,
                     point: np.ndarray) -> np.ndarray:
    """Where a world point appears in ``camera``'s image: (column, row) in [0, 1] when in view.

    Values outside [0, 1] mean outside the frame; NaN means behind the camera. Ground truth
    for a spatial grounding loss (which image cell holds the instructed object).
    """
    return CameraProjection(model, camera)(data, point)
