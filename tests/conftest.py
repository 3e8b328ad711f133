import os
import signal

os.environ.setdefault("MUJOCO_GL", "egl")

# A suite started in the background by a shell without job control inherits SIGINT as ignored,
# and so would every process it starts; the Ctrl-C tests need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import vla_gym  # noqa: E402,F401  (registers the env ids)
