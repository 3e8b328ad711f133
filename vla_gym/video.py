"""MP4 videos of rollouts with the instruction drawn under each frame."""

from __future__ import annotations

import textwrap
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

CAPTION_LINE_HEIGHT = 14
CAPTION_LINES = 3


def caption_frame(frame: np.ndarray, text: str) -> np.ndarray:
    """Return ``frame`` with a black band underneath holding ``text`` (wrapped)."""
    height, width = frame.shape[:2]
    chars_per_line = max(10, width // 7)
    lines = textwrap.wrap(text, chars_per_line)[:CAPTION_LINES]
    band = CAPTION_LINE_HEIGHT * CAPTION_LINES + 6  # fixed, so every frame has one size
    canvas = Image.new("RGB", (width, height + band))
    canvas.paste(Image.fromarray(frame), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k, line in enumerate(lines):
        draw.text((4, height + 3 + k * CAPTION_LINE_HEIGHT), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


class VideoRecorder:
    """Appends captioned frames to an MP4 (H.264 via imageio's ffmpeg plugin)."""

    def __init__(self, path: str | Path, fps: int = 25) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self._writer = None
        self.frames = 0

    def add(self, frame: np.ndarray, instruction: str) -> None:
        captioned = caption_frame(np.asarray(frame, dtype=np.uint8), instruction)
        if self._writer is None:
            self._writer = imageio.get_writer(self.path, fps=self.fps, macro_block_size=1)
        self._writer.append_data(captioned)
        self.frames += 1

    def episode_end(self, success: bool) -> None:
        """Episodes run on in one file; a recorder that sorts them by outcome overrides this."""

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
