"""One iopub subscription per kernel in a worker, shared by every websocket on that kernel.

iopub is a broadcast, so a socket per websocket would only multiply memory (a ZMQ socket costs tens of
KiB) and the kernel's fan-out. The feed reads the kernel's iopub as fast as it arrives and hands each
message to every subscribed websocket's outbox; it also carries the kernel events the supervisor
pushes (restarting, dead, restarted) to those websockets, and follows a restarted kernel, which it then
has say that it is idle in a way every client believes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from ..kernel_protocol import is_welcome, kernel_url, message_body, prove_live, receive, subscriber

if TYPE_CHECKING:
    from .channels import KernelConnection

log = logging.getLogger("kernels_gateway.channels")

NUDGE_TIMEOUT = 10.0
# A kernel that greets subscriptions does so within a millisecond or two; past this, it is asked.
WELCOME_WAIT = 0.05
PROBE_WAIT = 0.2  # then how long each kernel_info request's status may take to come through
# Seconds ZMQ may take to deliver the request for a tracked status after a restart.
TRACKED_STATUS_LINGER = 1.0


def signed(session: Session, msg: dict[str, Any]) -> list[bytes]:
    """A message dict (buffers included) as the frames to send: what Session.send would send, without
    the blocking send it does on a shadow of an asyncio socket."""
    return [*session.serialize(msg), *msg.get("buffers", ())]


class IOPubFeed:
    def __init__(self, context: zmq.asyncio.Context, kernel_id: str, info: dict[str, Any]):
        self.kernel_id = kernel_id
        self.subscribers: set[KernelConnection] = set()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._context = context
        self._heard = asyncio.Event()  # set by every iopub message
        self._started = asyncio.Lock()
        self._reader: asyncio.Task | None = None
        self._follower: asyncio.Task | None = None
        self._open(info)

    def _open(self, info: dict[str, Any]) -> None:
        self.info = info
        self.session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
        # No high-water mark: ZMQ would drop silently; each websocket's outbox bounds and reports instead.
        self._sub = subscriber(self._context, info, rcvhwm=0)

    async def ready(self) -> None:
        """The first websocket waits here until the subscription is proven live; the others pass."""
        async with self._started:
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(), name=f"iopub-{self.kernel_id}")
                await self._nudge()
                self._follower = asyncio.create_task(self._follow(), name=f"events-{self.kernel_id}")

    async def _nudge(self) -> None:
        """Wait until something arrives on the iopub socket (kernel_protocol.prove_live): the kernel's
        welcome, or else the status messages of kernel_info requests sent until one comes through.
        Requests go on throwaway sockets so their replies reach no client; control answers even while
        shell is busy."""
        self._heard.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._heard.wait(), WELCOME_WAIT)
            return
        probes = []
        for channel in ("shell", "control"):
            probe = self._context.socket(zmq.DEALER)
            probe.linger = 0
            probe.connect(kernel_url(self.info, channel))
            probes.append(probe)

        async def ask() -> None:
            for probe in probes:
                with contextlib.suppress(zmq.Again):  # a kernel that reads nothing: ask again later
                    await probe.send_multipart(signed(self.session, self.session.msg("kernel_info_request")),
                                               zmq.NOBLOCK)

        try:
            async with asyncio.timeout(NUDGE_TIMEOUT):
                await prove_live(self._heard, ask, PROBE_WAIT)
        except TimeoutError:
            log.warning("Kernel %s: no iopub message within %g s; relaying anyway", self.kernel_id, NUDGE_TIMEOUT)
        finally:
            for probe in probes:
                probe.close()

    async def _read(self) -> None:
        await receive(self._sub, self._received)

    def _received(self, parts: list[bytes]) -> None:
        body = message_body(parts)
        self._heard.set()
        if body is None:
            log.warning("Kernel %s: malformed iopub message dropped", self.kernel_id)
            return
        if is_welcome(body[0]):
            return  # a greeting for some gateway's subscription, meaningless to clients
        for connection in list(self.subscribers):
            connection.deliver("iopub", body)

    async def _follow(self) -> None:
        """Kernel events, in order: states go to every websocket, and so does `hold` (a restart someone
        asked for has begun); a restart opens the subscription anew (on new endpoints if a warm kernel
        took over; on the same ones too, since a socket reconnected by ZMQ across the restart is not
        to be trusted) and nudges it, for a new SUB socket misses what is published before its
        subscription propagates."""
        while True:
            event = await self.events.get()
            if event.get("hold"):
                for subscriber in list(self.subscribers):
                    subscriber.hold()
                continue
            if "connection_info" not in event:
                for subscriber in list(self.subscribers):
                    subscriber.kernel_state(event.get("execution_state"))
                continue
            info = event["connection_info"]
            async with self._started:  # websockets opening meanwhile wait for the new subscription
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
                self._sub.close()
                self._open(info)
                self._reader = asyncio.create_task(self._read(), name=f"iopub-{self.kernel_id}")
                await self._nudge()
            for subscriber in list(self.subscribers):
                subscriber.kernel_restarted(info)
            await self._ask_for_a_tracked_status()

    async def _ask_for_a_tracked_status(self) -> None:
        """After a restart, make the new process publish busy then idle for a request clients track.

        A restarted kernel's last state that clients such as JupyterLab believe is its own `starting`:
        they ignore the busy/idle around kernel_info and debug requests (Jupyter Server's untracked
        message types), which is all they see next, so JupyterLab would show "Starting" until the next
        cell; Jupyter Server leaves its clients there too. An is_complete_request is tracked and costs
        the kernel nothing. It is sent once the frames held for the new process are on their way, on a
        throwaway socket so that its reply reaches no client; the linger lets ZMQ send it after the
        socket is closed.
        """
        probe = self._context.socket(zmq.DEALER)
        probe.linger = int(TRACKED_STATUS_LINGER * 1000)
        probe.connect(kernel_url(self.info, "shell"))
        with contextlib.suppress(zmq.Again):  # a kernel too busy to read: it will publish its states anyway
            await probe.send_multipart(signed(self.session, self.session.msg("is_complete_request", {"code": ""})),
                                       zmq.NOBLOCK)
        probe.close()

    async def close(self) -> None:
        tasks = [task for task in (self._reader, self._follower) if task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sub.close()
