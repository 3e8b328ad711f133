"""Configs: strict parsing, presets by name, and a cheap package import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vla_gym.policies import VLAConfig
from vla_gym.policies.configuration import FORMAT_VERSION, HeadConfig, VisionConfig
from vla_gym.policies.presets import PRESETS, get_config, preset_table


def test_round_trip_through_json_is_exact():
    for name in PRESETS:
        config = get_config(name)
        again = VLAConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config


def test_unknown_key_is_named():
    data = VLAConfig().to_dict()
    data["fusion"]["colour"] = 1
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\] in fusion"):
        VLAConfig.from_dict(data)
    data = VLAConfig().to_dict()
    data["extra"] = 1
    with pytest.raises(ValueError, match="extra"):
        VLAConfig.from_dict(data)


def test_unknown_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="fusion.kind = 'late'.*'film'"):
        VLAConfig.from_dict({**VLAConfig().to_dict(), "fusion": {"kind": "late"}})
    with pytest.raises(ValueError, match="head.kind"):
        HeadConfig(kind="tokens")
    with pytest.raises(ValueError, match="multiple of vision.patch_size"):
        VisionConfig(kind="vit", image_size=60, patch_size=8)


def test_future_format_version_is_refused():
    data = {**VLAConfig().to_dict(), "format_version": FORMAT_VERSION + 1}
    with pytest.raises(ValueError, match="format_version"):
        VLAConfig.from_dict(data)


def test_presets_by_name_with_overrides():
    config = get_config("small", fusion={"kind": "gated"}, seed=3)
    assert config.fusion.kind == "gated" and config.seed == 3 and config.name == "small"
    assert get_config("nav-small").action_dim == 2
    assert get_config("small", head={"kind": "discrete"}).action_dim == 1
    with pytest.raises(ValueError, match="unknown preset 'huge'.*'small'"):
        get_config("huge")
    assert {row["preset"] for row in preset_table()} == set(PRESETS)


def test_clip_preset_has_real_b32_sizes_without_weights():
    config = get_config("clip-b32")
    assert config.vision.kind == "clip" and config.vision.pretrained is None
    assert config.vision.image_size == 224
    assert get_config("clip-b32", pretrained="/some/dir").language.pretrained == "/some/dir"


def test_importing_the_package_loads_no_heavy_library():
    code = ("import sys, vla_gym.policies as p; p.VLAConfig(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'stable_baselines3') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
