"""Shared fixtures: batches from real envs, tiny CLIP checkpoints, grounding classes."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from policy_helpers import collect_batch  # noqa: E402

from vla_gym.policies.presets import default_grounding_classes  # noqa: E402


@pytest.fixture(scope="session")
def tabletop_batch() -> dict[str, Any]:
    return collect_batch("vla_gym/TabletopPick-v0", 6)


@pytest.fixture(scope="session")
def nav_batch() -> dict[str, Any]:
    return collect_batch("vla_gym/NavGoTo-v0", 4)


@pytest.fixture(scope="session")
def grounding_classes() -> tuple[str, ...]:
    return default_grounding_classes()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-init tiny CLIP vision / text towers (+ a character-level CLIP tokenizer)."""
    tf = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("tiny_clip")
    chars = sorted(set(string.ascii_lowercase + string.digits + ",.'-?!"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: i + 2 for i, c in enumerate(chars)})
    vocab.update({c + "</w>": i + 2 + len(chars) for i, c in enumerate(chars)})
    torch.manual_seed(0)
    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, image_size=64, patch_size=16)
    text = tf.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, vocab_size=len(vocab),
                             max_position_embeddings=40, bos_token_id=0, eos_token_id=1,
                             pad_token_id=1)
    tf.CLIPVisionModel(vision).save_pretrained(root / "vision")
    tf.CLIPTextModel(text).save_pretrained(root / "text")
    tf.CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(root / "text")
    return {"vision": root / "vision", "text": root / "text"}


@pytest.fixture(scope="session")
def tiny_clip_model(tiny_clip: dict[str, Path]) -> Path:
    """A whole tiny ``CLIPModel`` directory (both towers + tokenizer), as a hub CLIP looks."""
    tf = pytest.importorskip("transformers")
    root = tiny_clip["vision"].parent / "clip"
    vision = tf.CLIPVisionConfig.from_pretrained(tiny_clip["vision"])
    text = tf.CLIPTextConfig.from_pretrained(tiny_clip["text"])
    config = tf.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                           projection_dim=16)
    torch.manual_seed(1)
    tf.CLIPModel(config).save_pretrained(root)
    tf.AutoTokenizer.from_pretrained(tiny_clip["text"]).save_pretrained(root)
    return root
