"""The control protocol's operations, each declared once: its name, its arguments and how each is checked.

The client checks a request before it sends it (so the web half refuses bad input with the same
message, without a round trip), and the server checks it again when it arrives (it trusts no frame).
An argument's check returns the value the operation gets, or raises the domain error that refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest

Check = Callable[[str, Any], Any]


def anything(name: str, value: Any) -> Any:
    return value


def _kind(what: str, test: Callable[[Any], bool], optional: bool = True) -> Check:
    """A check that lets through the values that pass `test` (and an absent one, if `optional`)."""
    def check(name: str, value: Any) -> Any:
        if not ((optional and value is None) or test(value)):
            raise BadRequest(f"{name} must be {what}")
        return value
    return check


text = _kind("a string", lambda value: isinstance(value, str))
required_text = _kind("a string", lambda value: isinstance(value, str), optional=False)
# A kernel's env: which names it may set is the environment policy's (environment.py).
strings = _kind("an object mapping names to string values", lambda value: isinstance(value, dict) and all(
    isinstance(k, str) and isinstance(v, str) for k, v in value.items()))
an_object = _kind("an object", lambda value: isinstance(value, dict))
seconds = _kind("a positive number of seconds",
                lambda value: not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0)
integer = _kind("an integer", lambda value: isinstance(value, int), optional=False)


def required_field(name: str, value: Any) -> str:
    """A field Jupyter Server's sessions API requires, refused in its words when missing."""
    if value is None:
        raise BadRequest(f"Missing field in JSON data: {name}")
    return required_text(name, value)


@dataclass(frozen=True)
class Operation:
    name: str
    args: Mapping[str, Check]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)  # an argument's name in messages, if not its own
    # What the operation may wait for besides the supervisor's answer, which makes its deadline
    # (supervisor/client.py): a kernel's start, a kernel's shutdown, a session's read position.
    waits: tuple[str, ...] = ()

    def check(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments this operation takes, each checked; others are dropped."""
        return {name: check(self.labels.get(name, name), args.get(name, self.defaults.get(name)))
                for name, check in self.args.items()}


def _op(op: str, /, *names: str, defaults: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None, waits: tuple[str, ...] = (), **checks: Check) -> Operation:
    return Operation(op, {**{n: anything for n in names}, **checks}, defaults or {}, labels or {}, waits)


KERNEL = ("kernel_id",)  # a kernel's id is checked where it is looked up (records.valid_kernel_id)
SESSION = {"path": text, "name": text, "type": text, "kernel_id": text, "kernel_name": text}

OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    _op("ping"),
    _op("status"),
    _op("kernelspecs"),
    _op("start", name=text, env=strings, waits=("start",)),
    _op("list"),
    _op("get", *KERNEL),
    _op("shutdown", *KERNEL, waits=("shutdown",)),
    _op("interrupt", *KERNEL),
    _op("restart", *KERNEL, waits=("start", "shutdown")),
    _op("connection_info", *KERNEL),
    _op("connection_opened", *KERNEL, "progress", "replay", session_id=text, connection=text, waits=("position",)),
    _op("connection_closed", *KERNEL, session_id=text, connection=text, last_msg_id=text),
    _op("replay_join", *KERNEL, session_id=text, until=text),
    _op("session_reply", *KERNEL, "channel", "parts", session_id=text),
    _op("subscribe"),
    _op("metrics"),
    _op("relayed", "counts", "opened", defaults={"opened": 0}),
    _op("hand_over"),
    _op("session_create", **{**SESSION, "path": required_field, "type": required_field},
        waits=("start", "shutdown")),
    _op("session_list"),
    _op("session_get", "session_id"),
    _op("session_update", "session_id", **SESSION, waits=("start", "shutdown")),
    _op("session_delete", "session_id", waits=("shutdown",)),
    _op("execute_submit", *KERNEL, "stream", code=required_text, metadata=an_object, timeout=seconds),
    _op("execute_get", *KERNEL, "request_id"),
    _op("execute_wait", *KERNEL, "request_id", after=integer, defaults={"after": 0}),
    _op("execute_input", *KERNEL, value=required_text, labels={"value": "input"}),
    _op("execute_list", *KERNEL),
)}


def check(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """A request's arguments, checked against its operation's declaration."""
    op = OPERATIONS.get(name)
    if op is None:
        raise BadRequest(f"unknown operation {str(name)[:50]!r}")
    return op.check(args)
