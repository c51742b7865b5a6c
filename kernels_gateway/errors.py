"""The one error that stops a start-up: the gateway cannot run as configured, and its message says why
and what to change. The command line prints the message, without a traceback, and exits 1; any other
exception is a defect and shows its traceback."""

from __future__ import annotations


class CannotStart(Exception):
    pass
