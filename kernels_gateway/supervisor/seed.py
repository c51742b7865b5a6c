"""Seeded kernels (Kernel Gateway's KG_SEED_URI): a notebook's code cells, run in every new kernel of the
notebook's language before the kernel is handed out, so that each client finds its data and imports ready.

The notebook is read once, when the supervisor starts; a notebook that cannot be read stops the start.
A cell that fails makes the kernel's start fail with that cell's error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import nbformat
import zmq
import zmq.asyncio
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.session import Session

from ..kernel_protocol import KERNEL_RECONNECT_MS, kernel_url
from ..errors import CannotStart, KernelStartFailed

FETCH_TIMEOUT = 30.0


class SeedError(CannotStart):
    """The seed notebook cannot be used; the supervisor does not start."""


@dataclass(frozen=True)
class Seed:
    uri: str
    language: str
    cells: tuple[str, ...]

    def fits(self, language: str) -> bool:
        """Whether kernels of this language get the seed."""
        return language.lower() == self.language

    async def run(self, session: Session, connection_info: dict[str, Any], context: zmq.asyncio.Context,
                  timeout: float) -> None:
        """Execute every code cell in turn on the kernel's shell; the first that fails stops the seeding."""
        shell = context.socket(zmq.DEALER)
        shell.linger = 0
        shell.reconnect_ivl = KERNEL_RECONNECT_MS
        shell.connect(kernel_url(connection_info, "shell"))
        try:
            async with asyncio.timeout(timeout):
                for number, code in enumerate(self.cells, 1):
                    reply = await _execute(session, shell, code)
                    if reply["status"] != "ok":
                        raise KernelStartFailed(
                            f"seed cell {number} of {self.uri} failed: "
                            f"{reply.get('ename', reply['status'])}: {reply.get('evalue', '')}"
                        )
        except TimeoutError:
            raise KernelStartFailed(f"seeding from {self.uri} took longer than {timeout:g} s") from None
        finally:
            shell.close()


async def _execute(session: Session, shell: zmq.asyncio.Socket, code: str) -> dict[str, Any]:
    """One execute_request and its reply's content. No stdin: a seed cell that asks for input fails."""
    sent = session.send(shell, "execute_request", {
        "code": code, "silent": False, "store_history": True, "user_expressions": {},
        "allow_stdin": False, "stop_on_error": True,
    })
    while True:
        _, parts = session.feed_identities(await shell.recv_multipart())
        reply = session.deserialize(parts)
        if reply["parent_header"].get("msg_id") == sent["header"]["msg_id"]:
            return reply["content"]


async def load_seed(uri: str, specs: KernelSpecManager) -> Seed:
    """Read the notebook at `uri` (a path, a file: URL or an http(s) URL) and find its language."""
    try:
        text = await _fetch(uri) if urlsplit(uri).scheme in ("http", "https") else _read(uri)
        notebook = nbformat.reads(text, as_version=4)
        nbformat.validate(notebook)
    except (OSError, aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as e:
        raise SeedError(f"Cannot read the seed notebook {uri}: {e or type(e).__name__}") from None
    except (ValueError, nbformat.ValidationError) as e:  # JSON errors are ValueErrors
        raise SeedError(f"The seed notebook {uri} is not a valid notebook: {str(e).splitlines()[0]}") from None
    language = _language(notebook, specs)
    if not language:
        raise SeedError(f"The seed notebook {uri} names no language (metadata.kernelspec.language or "
                        "metadata.language_info.name) and no installed kernelspec")
    cells = tuple(cell.source for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip())
    return Seed(uri=uri, language=language.lower(), cells=cells)


def _read(uri: str) -> str:
    parts = urlsplit(uri)
    path = parts.path if parts.scheme == "file" else uri
    return Path(path).read_text(encoding="utf-8")


async def _fetch(uri: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT)) as http:
        async with http.get(uri) as response:
            response.raise_for_status()
            return await response.text()


def _language(notebook: nbformat.NotebookNode, specs: KernelSpecManager) -> str:
    metadata = notebook.get("metadata", {})
    kernelspec = metadata.get("kernelspec", {})
    language = kernelspec.get("language") or metadata.get("language_info", {}).get("name")
    if language or not kernelspec.get("name"):
        return language or ""
    try:
        return specs.get_kernel_spec(kernelspec["name"]).language
    except NoSuchKernel:
        return ""
