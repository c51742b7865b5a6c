"""What a kernel (or a kernel template) prints to its own stdout and stderr, logged as lines of it.

A kernel is launched with a pipe for each (jupyter_client passes the launch arguments to Popen), so
nothing it prints reaches the gateway's own stream as it is: each line becomes a log record of logger
`kernels_gateway.kernel` with the kernel's id and the stream as extra fields (INFO for stdout, WARNING
for stderr), JSON like every other line with `--log-format json`.

The pipes are read in chunks as they come (asyncio's pipe transport reads at most 256 KiB per turn of
the event loop), lines are cut at MAX_LINE bytes, and each kernel may log LINES_PER_SECOND lines a
second (bursts of BURST): past that, lines are counted, not logged, and the count is logged once the
rate allows again. A kernel writing more than BYTES_PER_SECOND to its pipes is not read for the rest
of that second: its writes then wait, as they would on a slow terminal, and the supervisor does no
more work than that for it, whatever the kernel prints.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

log = logging.getLogger("kernels_gateway.kernel")

MAX_LINE = 4096
LINES_PER_SECOND = 50.0
BURST = 200.0
BYTES_PER_SECOND = 1 << 20
LEVELS = {"stdout": logging.INFO, "stderr": logging.WARNING}


class _Stream(asyncio.Protocol):
    def __init__(self, output: KernelOutput, name: str):
        self.output, self.name = output, name
        self.partial = b""
        self.transport: asyncio.ReadTransport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._window, self._window_bytes = 0.0, 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_LINE:
            lines.append(self.partial)
            self.partial = b""
        for line in lines:
            self.output.line(self.name, line)
        self._throttle(len(data))

    def _throttle(self, size: int) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._window_bytes = now, 0
        self._window_bytes += size
        if self._window_bytes > BYTES_PER_SECOND and self.transport and not self.transport.is_closing():
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(self._window + 1.0 - now, self._resume)

    def _resume(self) -> None:
        if self.transport and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        if self.partial:
            self.output.line(self.name, self.partial)
            self.partial = b""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class KernelOutput:
    """The readers of one kernel's stdout and stderr pipes, over every process the kernel runs in; or,
    with a `label` and no kernel id, of another process the supervisor starts (a template)."""

    def __init__(self, kernel_id: str, label: str = ""):
        self.kernel_id = kernel_id
        self.label = label
        self._streams: list[_Stream] = []
        self._tokens, self._refilled = BURST, time.monotonic()
        self._unlogged = 0

    async def follow(self, process: Any) -> None:
        """Read the pipes of a process just launched (a Popen with stdout and stderr pipes).

        The reader works on its own copy of each pipe: jupyter_client closes its file objects when it
        reaps the process, and a closed descriptor must never stay in the event loop's selector."""
        loop = asyncio.get_running_loop()
        self._streams = [stream for stream in self._streams if not stream.closed.done()]
        for name in ("stdout", "stderr"):
            pipe = getattr(process, name, None)
            if pipe is None:
                continue
            reading = os.fdopen(os.dup(pipe.fileno()), "rb", buffering=0)
            try:
                _, stream = await loop.connect_read_pipe(lambda name=name: _Stream(self, name), reading)
            except BaseException:
                reading.close()
                raise
            self._streams.append(stream)

    def line(self, stream: str, raw: bytes) -> None:
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._refilled) * LINES_PER_SECOND)
        self._refilled = now
        if self._tokens < 1:
            self._unlogged += 1
            return
        self._tokens -= 1
        extra = {**self._fields, "stream": stream}
        self._log_unlogged(extra)
        text = raw[:MAX_LINE].decode(errors="replace").rstrip()
        if len(raw) > MAX_LINE:
            text += f" [line cut at {MAX_LINE} of {len(raw)} bytes]"
        if text:
            log.log(LEVELS[stream], "%s %s: %s", self._whose, stream, text, extra=extra)

    @property
    def _whose(self) -> str:
        return self.label or f"Kernel {self.kernel_id}"

    @property
    def _fields(self) -> dict[str, str]:
        return {"kernel_id": self.kernel_id} if self.kernel_id else {}

    def _log_unlogged(self, extra: dict[str, str]) -> None:
        if self._unlogged:
            log.warning("%s: %d lines of output not logged (more than %g a second)", self._whose,
                        self._unlogged, LINES_PER_SECOND, extra=extra)
            self._unlogged = 0

    async def close(self, timeout: float = 1.0) -> None:
        """Stop reading: what the kernel wrote before it exited is logged first, if it comes soon."""
        streams, self._streams = self._streams, []
        if streams:
            await asyncio.wait([asyncio.ensure_future(s.closed) for s in streams], timeout=timeout)
        for stream in streams:
            if stream.transport:
                stream.transport.close()
        self._log_unlogged(self._fields)
