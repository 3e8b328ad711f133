"""Atomic training checkpoints: the policy (``save_pretrained``) plus the trainer's state.

A checkpoint is written to a temporary sibling directory and renamed into place, so a crash
or Ctrl-C at any moment leaves either the previous checkpoint or the new one, never half of
one. ``trainer_state.pt`` holds the optimiser, scheduler, step and RNG states for ``--resume``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

TRAINER_STATE = "trainer_state.pt"


def save_checkpoint(directory: Path, policy: Any, trainer_state: dict[str, Any]) -> Path:
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    torch.save(trainer_state, tmp / TRAINER_STATE)
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_trainer_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"no trainer state at {path}; resume needs a checkpoint "
                                "written by the trainer (RUN/checkpoints/latest)")
    return torch.load(path, map_location="cpu", weights_only=False)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """``RUN/checkpoints/latest``, or its ``.old`` twin if a crash hit mid-rename."""
    base = Path(run_dir) / "checkpoints" / "latest"
    for candidate in (base, base.with_name("latest.old")):
        if (candidate / TRAINER_STATE).is_file():
            return candidate
    return None
