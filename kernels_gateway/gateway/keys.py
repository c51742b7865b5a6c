"""Typed keys of the application's shared state: all of them, here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import zmq.asyncio
from aiohttp import web

from ..config import Config
from ..supervisor.client import SupervisorClient
from ..progress import ProgressMap

if TYPE_CHECKING:
    from .metrics import RelayCounts

CONFIG = web.AppKey("config", Config)
API_SPEC = web.AppKey("api_spec", str)
SUPERVISOR = web.AppKey("supervisor", SupervisorClient)
ZMQ_CONTEXT = web.AppKey("zmq_context", zmq.asyncio.Context)
# kernel id -> its iopub feed in this worker, with the websockets open on it
FEEDS = web.AppKey("feeds", dict)
# this worker's progress file (None if it could not be made), the websockets gone whose replies are
# still awaited, and the replies handed back to the supervisor for sessions that left this worker
PROGRESS = web.AppKey("progress", Optional[ProgressMap])
DEPARTING = web.AppKey("departing", set)
HANDED_BACK = web.AppKey("handed_back", set)
# what this worker relayed since its last report to the supervisor (metrics.py)
RELAYED: web.AppKey[RelayCounts] = web.AppKey("relayed")
