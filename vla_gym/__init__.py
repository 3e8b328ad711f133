"""vla_gym: simulation-first Gymnasium envs, policies and training for VLA robot learning.

Importing the package chooses a headless OpenGL backend (before mujoco loads) and registers
every env id in the table below.
"""

from __future__ import annotations

from vla_gym import gl_backend

gl_backend.configure()

from gymnasium.envs.registration import register, registry  # noqa: E402

__version__ = "0.1.0"

_TABLETOP = "vla_gym.envs.tabletop.env:TabletopEnv"
_NAV = "vla_gym.envs.navigation.env:NavEnv"

# id -> (entry point, kwargs, max_episode_steps). The one place env ids are declared.
ENV_TABLE: dict[str, tuple[str, dict, int]] = {
    "vla_gym/TabletopPick-v0": (_TABLETOP, {"tasks": "pick"}, 100),
    "vla_gym/TabletopPlace-v0": (_TABLETOP, {"tasks": "place"}, 160),
    "vla_gym/TabletopPush-v0": (_TABLETOP, {"tasks": "push"}, 160),
    "vla_gym/TabletopStack-v0": (_TABLETOP, {"tasks": "stack"}, 160),
    "vla_gym/TabletopMultiTask-v0": (
        _TABLETOP, {"tasks": ("pick", "place", "push", "stack")}, 160),
    "vla_gym/NavGoTo-v0": (_NAV, {"tasks": "goto"}, 500),
    "vla_gym/NavRelative-v0": (_NAV, {"tasks": "relative"}, 500),
    "vla_gym/NavMultiTask-v0": (_NAV, {"tasks": ("goto", "relative")}, 500),
}


def _register_all() -> None:
    for env_id, (entry_point, kwargs, max_steps) in ENV_TABLE.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point, kwargs=kwargs,
                     max_episode_steps=max_steps)


_register_all()

from vla_gym.vector import make_vec  # noqa: E402

__all__ = ["ENV_TABLE", "__version__", "make_vec"]
