"""The errors of the domain, which both halves share. The supervisor raises them, the wire carries their
`code`, the client raises them again on the gateway's side, and the gateway maps them to HTTP in one
place (gateway/errors.py). And CannotStart, the one error that stops a start-up: its message says why
and what to change; the command line prints it, without a traceback, and exits 1 (any other exception
is a defect and shows its traceback)."""

from __future__ import annotations


class CannotStart(Exception):
    pass


class GatewayError(Exception):
    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class KernelNotFound(GatewayError):
    code = "kernel_not_found"

    def __init__(self, kernel_id: str):
        super().__init__(f"Kernel does not exist: {kernel_id}")


class SessionNotFound(GatewayError):
    code = "session_not_found"

    def __init__(self, session_id: str):
        super().__init__(f"Session not found: {session_id}")


class ExecutionNotFound(GatewayError):
    code = "execution_not_found"

    def __init__(self, request_id: str, kernel_id: str = "", why: str = ""):
        super().__init__(f"Execution request {request_id} for kernel {kernel_id} does not exist"
                         + (f" any more: {why}" if why else ""))


class InputNotPending(GatewayError):
    """An input reply for a kernel whose executions wait for no input."""

    code = "input_not_pending"


class KernelSpecNotFound(GatewayError):
    code = "kernelspec_not_found"

    def __init__(self, name: str):
        super().__init__(f"No such kernel named {name}")


class KernelLimit(GatewayError):
    code = "kernel_limit"


class KernelBusy(GatewayError):
    """Another operation on the same kernel makes this one impossible (it is shutting down)."""

    code = "kernel_busy"


class KernelStartFailed(GatewayError):
    code = "kernel_start_failed"


class BadRequest(GatewayError):
    code = "bad_request"


class SupervisorUnavailable(GatewayError):
    code = "supervisor_unavailable"


class OutOfFiles(GatewayError):
    """The process is at (or near) its open-file limit: a new connection must wait until others close."""

    code = "out_of_files"


BY_CODE: dict[str, type[GatewayError]] = {
    cls.code: cls
    for cls in (
        GatewayError,
        KernelNotFound,
        SessionNotFound,
        ExecutionNotFound,
        InputNotPending,
        KernelSpecNotFound,
        KernelLimit,
        KernelBusy,
        KernelStartFailed,
        BadRequest,
        SupervisorUnavailable,
        OutOfFiles,
    )
}


def from_wire(code: str, message: str) -> GatewayError:
    """Rebuild the error the supervisor raised, keeping its message verbatim."""
    error = GatewayError.__new__(BY_CODE.get(code, GatewayError))
    GatewayError.__init__(error, message)
    return error
