"""Scripted oracle policies, one per task family, usable as policies (``act(obs)``)."""

from vla_gym.experts.navigation import NavExpert
from vla_gym.experts.tabletop import TabletopExpert
from vla_gym.experts.wrapper import ExpertActions, make_expert

__all__ = ["ExpertActions", "NavExpert", "TabletopExpert", "make_expert"]
