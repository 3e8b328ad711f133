import os

os.environ.setdefault("MUJOCO_GL", "egl")

import vla_gym  # noqa: E402,F401  (registers the env ids)
