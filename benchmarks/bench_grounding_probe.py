"""How well the ``small`` preset's perception grounds Pick instructions, trained on that alone.

    python benchmarks/bench_grounding_probe.py --seconds 150 \\
        [--policy RUN/TabletopPick-v0/policy ...] [--json runs/bench/grounding_probe.json]

Frames: the first frame of ``--train-scenes`` Pick scenes (seeds from 300 000) and of
``--test-scenes`` unseen ones (seeds from 100 000, the scenes ``bench_bc.py`` evaluates on),
each scene once per object its task could name and once more under a spatial-relation
instruction where one names that object (as the BC grounding scenes record them). The probe is
the preset's vision encoder, text encoder and FiLM fusion, trained from scratch on the target
map's loss alone (AdamW, random shifts) for ``--seconds``. A frame counts as grounded when the
centre of the map's highest cell lies within a tenth of the image of the named object.
``--policy`` scores trained policies' main-camera maps on the same held-out frames, so a BC
run's perception can be set against what the architecture reaches on grounding alone.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from seeds import EVAL_SEED  # this folder is on sys.path
from torch import nn

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.jsonfile import write_json
from vla_gym.policies import VLAPolicy, get_config
from vla_gym.policies.encoders.language import build_language
from vla_gym.policies.encoders.vision import build_vision
from vla_gym.policies.fusion import build_fusion
from vla_gym.policies.heads import target_map_loss
from vla_gym.policies.model import num_vision_tokens
from vla_gym.training.demos import _instructed_resets

PICK = "vla_gym/TabletopPick-v0"
TRAIN_SEED = 300_000
RELATION = re.compile(r"\b(left of|right of|in front of|behind)\b")
HIT_RADIUS = 0.1  # image fractions


def record(scenes: int, first_seed: int, image_size: int) -> dict[str, Any]:
    env = gym.make(PICK, image_size=image_size)
    rng = np.random.default_rng(first_seed)
    images, texts, pixels = [], [], []
    for seed in range(first_seed, first_seed + scenes):
        for obs, info in _instructed_resets(env, seed, others_only=False, relational=rng):
            images.append(obs["image"])
            texts.append(obs["instruction"])
            pixels.append(info["target_pixel"])
    env.close()
    return {"images": np.stack(images), "texts": texts,
            "pixels": np.stack(pixels).astype(np.float32),
            "relational": np.array([bool(RELATION.search(t)) for t in texts])}


class Probe(nn.Module):
    """The ``small`` preset's main-camera path up to the target map."""

    def __init__(self) -> None:
        super().__init__()
        cfg = get_config("small")
        self.vision = build_vision(cfg.vision)
        self.language = build_language(cfg.language)
        tokens = num_vision_tokens(cfg.vision, cfg.vision.patch_size)
        self.fusion = build_fusion(cfg.fusion, self.vision.out_dim, self.language.out_dim,
                                   tokens)
        self.register_buffer("mean", torch.tensor(self.vision.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.vision.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        lang = self.language(*self.language.tokenize(texts))
        pooled, tokens = self.vision((images - self.mean) / self.std)
        return self.fusion.forward_with_map(pooled, tokens, lang)[1]


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]; each model normalises its own."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0


def shifted(images: torch.Tensor, pixels: np.ndarray, pad: int, rng: np.random.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random shift of up to ``pad`` px for the batch, the labels moved with it."""
    size = images.shape[-1]
    dy, dx = rng.integers(0, 2 * pad + 1, 2)
    padded = nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    moved = torch.as_tensor(pixels) + torch.tensor([(pad - dx) / size, (pad - dy) / size])
    return padded[:, :, dy:dy + size, dx:dx + size], moved.float()


def train_probe(data: dict[str, Any], seconds: float, seed: int) -> tuple[Probe, int]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    probe = Probe()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=1e-4)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        index = rng.integers(0, len(data["texts"]), 64)
        images, pixels = shifted(to_input(data["images"][index]), data["pixels"][index], 4, rng)
        loss, _ = target_map_loss(probe(images, [data["texts"][i] for i in index]), pixels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return probe, steps


@torch.no_grad()
def grounded(map_of: Any, data: dict[str, Any]) -> dict[str, float]:
    """Share of frames whose map peak lies within ``HIT_RADIUS`` of the target, by kind."""
    hits = []
    for start in range(0, len(data["texts"]), 256):
        index = np.arange(start, min(start + 256, len(data["texts"])))
        logits = map_of(to_input(data["images"][index]), [data["texts"][i] for i in index])
        side = int(round(logits.shape[1] ** 0.5))
        peak = logits.argmax(1)
        centre = torch.stack([(peak % side + 0.5) / side, (peak // side + 0.5) / side], 1)
        error = (centre - torch.as_tensor(data["pixels"][index])).norm(dim=1)
        hits.append((error < HIT_RADIUS).numpy())
    hit, relational = np.concatenate(hits), data["relational"]
    return {"all": float(hit.mean()), "relational": float(hit[relational].mean()),
            "other": float(hit[~relational].mean())}


def policy_map(path: Path) -> Any:
    policy = VLAPolicy.from_pretrained(path)
    policy.eval()
    trunk = policy.trunk

    def map_of(images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        images = (images - policy.pixel_mean) / policy.pixel_std
        lang = trunk.language(*trunk.language.tokenize(texts))
        pooled, tokens = trunk.vision(images)
        return trunk.fusion.forward_with_map(pooled, tokens, lang)[1]

    return map_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-scenes", type=int, default=1200)
    parser.add_argument("--test-scenes", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=150.0, help="probe training time")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--policy", type=Path, action="append", default=[],
                        help="a trained policy whose main-camera map to score (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    policies = {str(path): policy_map(path) for path in args.policy}  # bad paths fail first
    train = record(args.train_scenes, TRAIN_SEED, args.image_size)
    test = record(args.test_scenes, EVAL_SEED, args.image_size)
    probe, steps = train_probe(train, args.seconds, args.seed)
    probe.eval()
    figures: dict[str, Any] = {
        "train_frames": len(train["texts"]), "test_frames": len(test["texts"]),
        "test_relational_frames": int(test["relational"].sum()),
        "probe": {"seconds": args.seconds, "steps": steps, "grounded": grounded(probe, test)},
        "policies": {name: grounded(map_of, test) for name, map_of in policies.items()},
    }
    rows = [("probe", figures["probe"]["grounded"]), *figures["policies"].items()]
    print(f"{figures['test_frames']} held-out first frames "
          f"({figures['test_relational_frames']} relational); probe: {steps} steps")
    for name, g in rows:
        print(f"  {name}: grounded {g['all']:.1%} (relational {g['relational']:.1%}, "
              f"other {g['other']:.1%})")
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    main()
