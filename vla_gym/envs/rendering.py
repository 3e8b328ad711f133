"""Offscreen camera rendering with fast defaults.

MuJoCo's default offscreen quality (4x multisampling, a 4096 shadow map, reflections) costs
~35 ms a frame on a CPU renderer whatever the image size; with those three off the same scene
renders at 1000+ frames/s at 64-96 px. ``"fast"`` is therefore the default and ``"high"``
restores MuJoCo's look for videos and figures. Every frame also uses an offscreen buffer of
exactly the image size, fast frames skip haze, and envs leave parked (out-of-view) pooled
bodies out of the scene (``set_geoms_drawn``).
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np

from vla_gym.types import RENDER_QUALITIES, pixel_label

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
    a 96 px frame rendered 5-10% faster from an image-sized one, with the same bytes. The
    model's own values are put back for other renderers.
    """
    vis = model.vis.global_
    saved = int(vis.offwidth), int(vis.offheight)
    vis.offwidth, vis.offheight = width, height
    try:
        return mujoco.Renderer(model, height=height, width=width)
    finally:
        vis.offwidth, vis.offheight = saved


class CameraRenderer:
    """Renders named cameras of one model at one size and quality."""

    def __init__(
        self, model: mujoco.MjModel, width: int, height: int, quality: str = "fast"
    ) -> None:
        apply_quality(model, quality)
        self._renderer = _new_renderer(model, width, height)
        effects = _QUALITY[quality][2]
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = effects
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = effects
        # Haze shades the horizon, which our cameras do not see: off, it changed no pixel of
        # the tabletop main and wrist or the navigation main camera, and saved 3-7% a frame.
        flags[mujoco.mjtRndFlag.mjRND_HAZE] = effects
        self.width, self.height, self.quality = width, height, quality

    def render(self, data: mujoco.MjData, camera: str | int) -> np.ndarray:
        """One RGB frame, uint8 (H, W, 3), freshly allocated."""
        self._renderer.update_scene(data, camera=camera)
        return self._renderer.render()

    def render_many(self, data: mujoco.MjData, cameras: Sequence[str]) -> list[np.ndarray]:
        return [self.render(data, cam) for cam in cameras]

    def close(self) -> None:
        renderer, self._renderer = getattr(self, "_renderer", None), None
        if renderer is not None:
            renderer.close()


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
        # MuJoCo cameras look down their -z axis with +x right and +y up.
        local = data.cam_xmat[cam].reshape(3, 3).T @ (np.asarray(point, float) - data.cam_xpos[cam])
        depth = -local[2]
        if depth <= 1e-6:
            return np.full(2, np.nan)
        return np.array([0.5 + self.focal * local[0] / depth,
                         0.5 - self.focal * local[1] / depth])


def view_projections(model: mujoco.MjModel, cameras: dict[str, str],
                     ) -> tuple[tuple[str, CameraProjection], ...]:
    """(info key, projection) per extra image view: ``cameras`` maps each view's observation key
    to its MuJoCo camera; the keys are ``types.pixel_label``'s (``wrist_target_pixel``...)."""
    return tuple((pixel_label(view), CameraProjection(model, camera))
                 for view, camera in cameras.items())


def project_to_image(model: mujoco.MjModel, data: mujoco.MjData, camera: str,
                     point: np.ndarray) -> np.ndarray:
    """Where a world point appears in ``camera``'s image: (column, row) in [0, 1] when in view.

    Values outside [0, 1] mean outside the frame; NaN means behind the camera. Ground truth
    for a spatial grounding loss (which image cell holds the instructed object).
    """
    return CameraProjection(model, camera)(data, point)
