"""The command line: a start-up that cannot be done is one clear line and exit 1; anything else is a
defect, and its traceback shows."""

from __future__ import annotations

import logging

import pytest

from kernels_gateway import cli
from kernels_gateway.errors import CannotStart
from kernels_gateway.supervisor import main as supervisor_main


@pytest.fixture
def supervisor_raising(monkeypatch):
    def raising(error: BaseException):
        async def serve(config):
            raise error
        monkeypatch.setattr(supervisor_main, "serve", serve)
    monkeypatch.setattr(cli, "configure_logging", lambda config: None)
    return raising


def test_cannot_start_is_one_line_and_exit_1(supervisor_raising, caplog):
    supervisor_raising(CannotStart("Runtime directory /x is in use"))
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
        cli.main(["supervisor"])
    assert stopped.value.code == 1
    assert [r.getMessage() for r in caplog.records] == ["Runtime directory /x is in use"]


@pytest.mark.parametrize("error", [RuntimeError("a defect"), OSError(5, "I/O error")])
def test_any_other_error_keeps_its_traceback(supervisor_raising, error):
    supervisor_raising(error)
    with pytest.raises(type(error)):
        cli.main(["supervisor"])
