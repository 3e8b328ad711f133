"""Shared fixtures: unique ROS domains on loopback, private in-memory buses, robot configs."""

from __future__ import annotations

import itertools
import os
import uuid

import pytest

from vla_gym.sim2real.config import load_robot
from vla_gym.sim2real.transports.memory import MemoryTransport

_domains = itertools.count()


def _has_cyclonedds() -> bool:
    try:
        import cyclonedds  # noqa: F401
    except ImportError:
        return False
    return True


requires_dds = pytest.mark.skipif(not _has_cyclonedds(),
                                  reason="cyclonedds not installed (pip install 'vla_gym[ros2]')")


@pytest.fixture
def domain_id() -> int:
    """A ROS_DOMAIN_ID no other test (or concurrent test process) uses: no cross-talk."""
    return 100 + (os.getpid() * 17 + next(_domains)) % 130


@pytest.fixture
def dds_options(domain_id: int) -> dict:
    """Transport options for the dds backend on loopback only, in a private domain."""
    if not _has_cyclonedds():
        pytest.skip("cyclonedds not installed (pip install 'vla_gym[ros2]')")
    from vla_gym.sim2real.transports.dds import loopback_config

    return {"domain_id": domain_id, "config": loopback_config()}


@pytest.fixture
def bus() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
def memory_pair(bus: str):
    """Two in-memory transports on one private bus (robot side, policy side)."""
    a, b = MemoryTransport(bus), MemoryTransport(bus)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def nav_robot():
    """The TurtleBot-like file, pointed at a sim bridge, limits = the contract's maxima."""
    return load_robot("turtlebot_like.yaml", topics={"sim": "/sim"},
                      limits={"max_velocity": [0.5, 1.5]})


@pytest.fixture
def arm_robot():
    return load_robot("servo_arm.yaml", topics={"sim": "/sim"})
