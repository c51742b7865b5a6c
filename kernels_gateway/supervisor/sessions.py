"""Jupyter Server's sessions API, kept small and in memory: a session names a kernel by a path, so
that pages (Thebe) and notebooks find the same kernel again.

Sessions live here, beside the kernels, and not in the web workers: workers are stateless and may be
several, and every one of them must see every session. They do not outlive the supervisor. A session
whose kernel is gone (shut down, culled) goes with it, as in Jupyter Server; deleting a session shuts
its kernel down.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest, KernelNotFound, SessionNotFound
from .kernels import Kernels
from .records import KERNEL_ID

FIELDS = ("path", "name", "type")


@dataclass
class Session:
    id: str
    path: str
    name: str | None
    type: str
    kernel_id: str


class Sessions:
    def __init__(self, kernels: Kernels):
        self.kernels = kernels
        self._sessions: dict[str, Session] = {}
        self._creating: dict[str, tuple[asyncio.Lock, int]] = {}  # by path: the lock and its users

    @property
    def ops(self) -> dict[str, Any]:
        """The supervisor's operations on sessions, for its dispatch table."""
        return {"session_create": self.create, "session_list": self.list, "session_get": self.get,
                "session_update": self.update, "session_delete": self.delete}

    def model(self, session: Session) -> dict[str, Any]:
        """Jupyter Server's session model; KernelNotFound, and the session forgotten, if its kernel is gone."""
        try:
            kernel = self.kernels.get(session.kernel_id).model()
        except KernelNotFound:
            self._sessions.pop(session.id, None)
            raise
        model = {"id": session.id, "path": session.path, "name": session.name, "type": session.type,
                 "kernel": kernel}
        if session.type == "notebook":  # the deprecated shape, which Jupyter Server still answers with
            model["notebook"] = {"path": session.path, "name": session.name}
        return model

    def _find(self, args: dict) -> Session:
        session_id = args.get("session_id")
        if not isinstance(session_id, str) or not KERNEL_ID.fullmatch(session_id):
            raise SessionNotFound(str(session_id)[:100])
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(session_id) from None

    async def create(self, args: dict, client: Any) -> dict[str, Any]:
        """A new session on a new kernel (or on `kernel_id`'s), unless one has this path already."""
        fields = _fields(args)
        kernel_name, kernel_id = args["kernel_name"] or None, args["kernel_id"] or None
        path = fields["path"]
        async with self._creating_lock(path):
            for session in list(self._sessions.values()):
                if session.path == path:
                    with contextlib.suppress(KernelNotFound):
                        return self.model(session)
            if kernel_id:
                self.kernels.get(kernel_id)
            else:
                kernel_id = (await self.kernels.start(kernel_name)).id
            session = Session(id=str(uuid.uuid4()), path=path, name=fields.get("name"), type=fields["type"],
                              kernel_id=kernel_id)
            self._sessions[session.id] = session
            return self.model(session)

    @contextlib.asynccontextmanager
    async def _creating_lock(self, path: str):
        """One creation at a time per path, so that two at once make one session; the lock goes when
        nobody holds or awaits it."""
        lock, users = self._creating.get(path, (asyncio.Lock(), 0))
        self._creating[path] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._creating[path]
            if users == 1:
                del self._creating[path]
            else:
                self._creating[path] = (lock, users - 1)

    async def list(self, args: dict, client: Any) -> list[dict[str, Any]]:
        models = []
        for session in list(self._sessions.values()):
            with contextlib.suppress(KernelNotFound):
                models.append(self.model(session))
        return models

    async def get(self, args: dict, client: Any) -> dict[str, Any]:
        return self._model_or_gone(self._find(args))

    async def update(self, args: dict, client: Any) -> dict[str, Any]:
        """Rename (path, name, type), or move to another kernel: an existing one (`kernel_id`) or a new
        one of `kernel_name`. The kernel left behind is shut down, as Jupyter Server does."""
        session = self._find(args)
        self._model_or_gone(session)
        fields = _fields(args)
        kernel_name, kernel_id = args["kernel_name"] or None, args["kernel_id"] or None
        if kernel_id:
            try:
                self.kernels.get(kernel_id)
            except KernelNotFound:
                raise BadRequest(f"No such kernel: {kernel_id[:100]}") from None
        elif kernel_name:
            kernel_id = (await self.kernels.start(kernel_name)).id
        for key, value in fields.items():
            setattr(session, key, value)
        before, session.kernel_id = session.kernel_id, kernel_id or session.kernel_id
        if before != session.kernel_id:
            with contextlib.suppress(KernelNotFound):
                await self.kernels.shutdown(before)
        return self.model(session)

    async def delete(self, args: dict, client: Any) -> None:
        """Forget the session and shut its kernel down."""
        session = self._find(args)
        del self._sessions[session.id]
        with contextlib.suppress(KernelNotFound):
            await self.kernels.shutdown(session.kernel_id)

    def _model_or_gone(self, session: Session) -> dict[str, Any]:
        try:
            return self.model(session)
        except KernelNotFound:
            raise SessionNotFound(session.id) from None


def _fields(args: dict) -> dict[str, str]:
    """The session's path, name and type given in `args` (checked with their operation: operations.py)."""
    return {key: args[key] for key in FIELDS if args[key] is not None}
