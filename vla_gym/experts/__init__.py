"""Scripted oracle policies, one per task family, usable as policies (``act(obs)``)."""

from vla_gym.experts.tabletop import TabletopExpert
from vla_gym.experts.wrapper import ExpertActions, make_expert

__all__ = ["ExpertActions", "TabletopExpert", "make_expert"]
