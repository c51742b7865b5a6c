"""Typed keys of the application's shared state."""

from __future__ import annotations

import zmq.asyncio
from aiohttp import web

from ..config import Config
from ..supervisor.client import SupervisorClient

CONFIG = web.AppKey("config", Config)
API_SPEC = web.AppKey("api_spec", str)
SUPERVISOR = web.AppKey("supervisor", SupervisorClient)
ZMQ_CONTEXT = web.AppKey("zmq_context", zmq.asyncio.Context)
# kernel id -> its iopub feed in this worker, with the websockets open on it
FEEDS = web.AppKey("feeds", dict)
