"""Typed keys of the application's shared state."""

from __future__ import annotations

import weakref

import zmq.asyncio
from aiohttp import web

from ..config import Config
from ..supervisor.client import SupervisorClient

CONFIG = web.AppKey("config", Config)
API_SPEC = web.AppKey("api_spec", str)
SUPERVISOR = web.AppKey("supervisor", SupervisorClient)
ZMQ_CONTEXT = web.AppKey("zmq_context", zmq.asyncio.Context)
WEBSOCKETS = web.AppKey("websockets", weakref.WeakSet)
