"""Ctrl-C becomes a stop request at the next safe point; a second one interrupts at once."""

from __future__ import annotations

import os
import signal

import pytest

from vla_gym.interrupts import StopRequest


def test_first_ctrl_c_is_a_request_second_raises_and_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested  # no exception: the loop decides when to leave
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_outside_the_main_thread_nothing_is_installed():
    import threading

    seen = {}

    def body():
        with StopRequest() as stop:
            seen["installed"] = stop._installed

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen["installed"] is False
