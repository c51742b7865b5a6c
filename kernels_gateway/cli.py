"""Command line: `kernels-gateway` (everything), `kernels-gateway supervisor`, `kernels-gateway web`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sys

from . import __version__, logs
from .config import WEB, Config, add_arguments, from_namespace
from .errors import CannotStart, GatewayError

COMMANDS = {
    "supervisor": "run only the supervisor, which owns every kernel",
    "web": "run only a web worker, which finds the supervisor's socket in --runtime-dir",
    "probe": "exit 0 if the gateway at --ip, --port and --base-path answers, 1 if not (health checks)",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="kernels-gateway",
        description="Jupyter kernels over HTTP and websockets. Without a command, runs the supervisor "
        "and the web workers together.",
    )
    top.add_argument("--version", action="version", version=__version__)
    add_arguments(top, "all")
    commands = top.add_subparsers(dest="command", metavar="{supervisor,web,probe}")
    for name, help in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help, description=help), WEB if name == "probe" else name)
    return top


def configure_logging(config: Config) -> None:
    logs.configure(config.log_level, config.log_format)


def raise_open_file_limit() -> None:
    """Every websocket holds a few sockets and every kernel a few pipes: the soft limit (often 1024) is
    too low for a gateway, and raising it to the hard limit needs no privilege."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> None:
    ns = parser().parse_args(argv)
    config = from_namespace(ns)
    configure_logging(config)
    raise_open_file_limit()
    if ns.command == "supervisor":
        from .supervisor.main import serve
    elif ns.command == "web":
        from .gateway.server import serve
    elif ns.command == "probe":
        from .probe import probe

        sys.exit(asyncio.run(probe(config)))
    else:
        from .arbiter import run as serve
    try:
        sys.exit(asyncio.run(serve(config)))
    except (CannotStart, GatewayError) as e:  # GatewayError: the first kernels cannot start
        logging.getLogger("kernels_gateway").error("%s", getattr(e, "message", e))
        sys.exit(1)
