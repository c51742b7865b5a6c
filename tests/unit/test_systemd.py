"""sd_watchdog_enabled and sd_listen_fds semantics: whose watchdog, whose sockets."""

from __future__ import annotations

import os

import pytest

from kernels_gateway.systemd import listen_sockets, watchdog_interval


@pytest.mark.parametrize("environ, interval", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's watchdog
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval(environ, interval):
    assert watchdog_interval(environ) == interval


def test_sockets_meant_for_another_process_are_left_alone():
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert listen_sockets(environ) == []
    assert environ == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert listen_sockets({}) == []
    assert listen_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "many"}) == []
