"""Configuration, built once at the edge: every option is a flag, a KERNELS_GATEWAY_* variable, and where
Kernel Gateway had one, its KG_* variable too (flag > KERNELS_GATEWAY_* > KG_* > default)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
from jupyter_core.paths import jupyter_runtime_dir

SUPERVISOR, WEB = "supervisor", "web"
BOTH = (SUPERVISOR, WEB)


def _opt(default, help: str, roles=BOTH, kg: str | None = None, env: str | None = None, flag: bool = True, **kw):
    return field(default=default, metadata={"help": help, "roles": roles, "kg": kg, "env": env, "flag": flag, **kw})


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _pool(value: str) -> tuple[str, ...]:
    """`--pool` entries, each NAME=N or none."""
    entries = _csv(value)
    for entry in entries:
        name, _, size = entry.rpartition("=")
        if entry.lower() != "none" and (not name or not size.isdigit()):
            raise argparse.ArgumentTypeError(f"--pool takes NAME=N, not {entry!r}")
    return entries


def _niceness(value: str) -> int:
    if not value.isdigit() or int(value) > 19:
        raise argparse.ArgumentTypeError(f"not a niceness from 0 to 19: {value!r}")
    return int(value)


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class Config:
    ip: str = _opt("127.0.0.1", "interface the gateway listens on", (WEB,), kg="KG_IP")
    port: int = _opt(8000, "port the gateway listens on", (WEB,), kg="KG_PORT")
    base_path: str = _opt("/", "path prefix of every route, such as /krn", (WEB,), kg="KG_BASE_URL")
    workers: int = _opt(1, "number of web worker processes (one-command mode)", ())
    watchdog_timeout: float = _opt(
        30.0, "seconds a worker or the supervisor may go without a watchdog ping before it is aborted and "
        "restarted (one-command mode; 0: no watchdog)", (),
    )
    orphan_timeout: float = _opt(
        60.0, "seconds the supervisor keeps its kernels after its kernels-gateway process dies, for the next "
        "kernels-gateway on the same runtime directory to take over; then it shuts them down", (SUPERVISOR,),
    )
    runtime_dir: Path = _opt(
        Path(jupyter_runtime_dir()) / "kernels-gateway",
        "folder for the supervisor's socket and the kernels' connection files and IPC sockets",
    )
    kernel_name: str = _opt(
        "", "kernelspec of the kernels started at launch (default: the default kernelspec)",
        (SUPERVISOR,), env="KERNEL_NAME",
    )
    initial_kernels: int = _opt(1, "kernels started at launch", (SUPERVISOR,), kg="KG_PRESPAWN_COUNT")
    default_kernel_name: str = _opt(
        "", "kernelspec used when a start request names none", (SUPERVISOR,), kg="KG_DEFAULT_KERNEL_NAME"
    )
    max_kernels: int = _opt(0, "most kernels running at once (0: no limit)", (SUPERVISOR,), kg="KG_MAX_KERNELS")
    force_kernel_name: str = _opt(
        "", "kernelspec of every kernel, whatever a start request names", (SUPERVISOR,), kg="KG_FORCE_KERNEL_NAME"
    )
    env_allow: tuple[str, ...] = _opt(
        (), "comma-separated names besides KERNEL_* that a start request may set in a kernel's environment",
        (SUPERVISOR,), kg="KG_ENV_WHITELIST", parse=_csv,
    )
    env_inherit: tuple[str, ...] = _opt(
        (), "comma-separated names that, with PATH, are all kernels inherit from the gateway's environment "
        "(unset: everything but the gateway's secrets)",
        (SUPERVISOR,), kg="KG_ENV_PROCESS_WHITELIST", parse=_csv,
    )
    list_kernels: bool = _opt(True, "answer GET /api/kernels (false: 403, Kernel Gateway's default)", (WEB,),
                              kg="KG_LIST_KERNELS")
    trust_xheaders: bool = _opt(
        False, "believe a reverse proxy's Forwarded and X-Forwarded-For, -Proto and -Host headers (the "
        "client's address, the public scheme and host); only for a gateway that only the proxy can reach",
        (WEB,), kg="KG_TRUST_XHEADERS",
    )
    sessions: bool = _opt(False, "serve Jupyter Server's sessions API, /api/sessions (Thebe needs it)", (WEB,))
    auth_token: str = _opt(
        "", "token every request must carry, as `Authorization: token T` or ?token=T (prefer the variable: "
        "a flag shows in ps)", (WEB,), kg="KG_AUTH_TOKEN", secret=True,
    )
    allow_origin: tuple[str, ...] = _opt(
        (), "comma-separated origins whose pages may use the gateway (CORS and the websocket's Origin check), "
        "or * for any", (WEB,), kg="KG_ALLOW_ORIGIN", parse=_csv,
    )
    allow_credentials: bool = _opt(False, "CORS: let pages send cookies (Access-Control-Allow-Credentials); "
                                   "not with --allow-origin '*'", (WEB,), kg="KG_ALLOW_CREDENTIALS")
    allow_headers: tuple[str, ...] = _opt(
        ("Authorization", "Content-Type"), "CORS: comma-separated request headers pages may send, or *",
        (WEB,), kg="KG_ALLOW_HEADERS", parse=_csv,
    )
    allow_methods: tuple[str, ...] = _opt(("*",), "CORS: comma-separated methods pages may use, or *", (WEB,),
                                          kg="KG_ALLOW_METHODS", parse=_csv)
    expose_headers: tuple[str, ...] = _opt((), "CORS: comma-separated response headers pages may read, or *",
                                           (WEB,), kg="KG_EXPOSE_HEADERS", parse=_csv)
    max_age: int = _opt(0, "CORS: seconds browsers may cache a preflight answer (0: not sent)", (WEB,),
                        kg="KG_MAX_AGE")
    allow_host: tuple[str, ...] = _opt(
        (), "comma-separated host names requests may be addressed to (the Host header), besides localhost and "
        "loopback addresses, or * for any; checked only while listening on loopback alone (DNS rebinding)",
        (WEB,), parse=_csv,
    )
    transport: str = _opt(
        "ipc", "ZMQ transport between kernels and the gateway: ipc, or tcp on 127.0.0.1, where any local user "
        "can subscribe to a kernel's iopub port and read its code and output (ZMQ PUB has no authentication)",
        (SUPERVISOR,), choices=("ipc", "tcp"),
    )
    # Both halves: the web half waits that long for the supervisor's answer to a start or a shutdown.
    kernel_start_timeout: float = _opt(60.0, "seconds a kernel has to answer its first request")
    shutdown_wait: float = _opt(
        5.0, "seconds a kernel has to exit after a shutdown request before it is terminated, then killed",
    )
    restart_limit: int = _opt(
        5, "restarts of a kernel that keeps dying within 10 s of starting before it is declared dead", (SUPERVISOR,)
    )
    kernel_nice: int = _opt(
        19, "niceness added to a local kernel's process while it waits for work or prints a lot (0-19; 0: "
        "never), so that kernels printing on every core leave the gateway its turns", (SUPERVISOR,),
        parse=_niceness,
    )
    cull_idle_timeout: float = _opt(
        0.0, "shut down kernels idle for longer than this many seconds (0: never)", (SUPERVISOR,)
    )
    cull_interval: float = _opt(300.0, "seconds between two checks for idle kernels", (SUPERVISOR,))
    cull_connected: bool = _opt(False, "cull idle kernels even when a websocket is connected", (SUPERVISOR,))
    cull_busy: bool = _opt(False, "cull kernels that are busy (idle means: no iopub message)", (SUPERVISOR,))
    seed_uri: str = _opt(
        "", "notebook (a path or an http(s) URL) whose code cells run in every new kernel of its language "
        "before the kernel is handed out", (SUPERVISOR,), kg="KG_SEED_URI",
    )
    pool: tuple[str, ...] = _opt(
        (), "warm kernels kept ready, as NAME=N (repeatable, or comma-separated); none for no pool "
        "(default: one of the default kernelspec)", (SUPERVISOR,), parse=_pool, repeat=True,
    )
    fork: str = _opt(
        "python", "python: fork Python kernels that run ipykernel with the gateway's own interpreter from a "
        "template that has imported it; none: launch every kernel", (SUPERVISOR,), choices=("python", "none"),
    )
    preload: tuple[str, ...] = _opt(
        (), "comma-separated modules the Python kernels' templates import, so that kernels start with them",
        (SUPERVISOR,), parse=_csv,
    )
    replay_bytes: int = _opt(
        8 << 20, "iopub bytes kept per kernel for clients that reconnect with the same session_id", (SUPERVISOR,)
    )
    replay_age: float = _opt(120.0, "seconds that replayable iopub messages are kept", (SUPERVISOR,))
    execution_bytes: int = _opt(
        32 << 20, "bytes of code and outputs kept per kernel for the execute API (running and finished "
        "executions); past it the oldest results, then the oldest outputs, are dropped, and results say so",
        (SUPERVISOR,),
    )
    execution_age: float = _opt(600.0, "seconds the execute API keeps a finished execution's result",
                                (SUPERVISOR,))
    max_body_size: int = _opt(1 << 20, "largest request body in bytes", (WEB,))
    max_message_size: int = _opt(64 << 20, "largest websocket message in bytes", (WEB,))
    ws_ping_interval: float = _opt(
        30.0, "seconds between pings on every websocket; one that does not answer in time is closed (0: no pings)",
        (WEB,), kg="KG_WS_PING_INTERVAL_SECS",
    )
    idle_connection_timeout: float = _opt(
        75.0, "seconds a connection may take to send a request's headers, or stay idle between two requests, "
        "before it is closed", (WEB,),
    )
    max_output_buffer: int = _opt(
        32 << 20, "kernel output in bytes waiting for one slow websocket before more is dropped (and the "
        "client told)", (WEB,)
    )
    certfile: str = _opt("", "TLS certificate chain (PEM): serve HTTPS and WSS", (WEB,), kg="KG_CERTFILE")
    keyfile: str = _opt("", "private key of --certfile (PEM), if not in that file", (WEB,), kg="KG_KEYFILE")
    client_ca: str = _opt(
        "", "CA certificates (PEM): clients must present a certificate they signed", (WEB,), kg="KG_CLIENT_CA"
    )
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING or ERROR",
                          choices=("DEBUG", "INFO", "WARNING", "ERROR"), upper=True)
    log_format: str = _opt("text", "text, or json for one JSON object per line", choices=("text", "json"))
    # Set by the one-command arbiter for its workers: the inherited listening socket.
    fd: int = _opt(-1, "", (WEB,), flag=False)
    # Set by the one-command arbiter for its supervisor: the process whose death orphans it.
    arbiter_pid: int = _opt(0, "", (SUPERVISOR,), flag=False)

    @property
    def pool_sizes(self) -> tuple[tuple[str, int], ...]:
        """`--pool` as (kernelspec, size) pairs: none is an empty pool, nothing is one default kernel."""
        if not self.pool:
            return ((self.force_kernel_name or self.default_kernel_name or NATIVE_KERNEL_NAME, 1),)
        return tuple((name, int(size)) for name, _, size in (e.rpartition("=") for e in self.pool if e.lower() != "none"))

    def url(self, host: str | None = None, port: int | None = None, path: str = "/api/kernels") -> str:
        """The URL of `path` on this gateway, at --ip and --port unless told another address; https with
        --certfile."""
        host = self.ip if host is None else host
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://{host}:{self.port if port is None else port}{self.base}{path}"

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / "supervisor.sock"

    @property
    def base(self) -> str:
        """The base path normalised to '' or '/segment(s)' without a trailing slash."""
        stripped = self.base_path.strip("/")
        return f"/{stripped}" if stripped else ""

    def args_for(self, role: str) -> list[str]:
        """Flags that hand this configuration to a child process playing `role` (secrets excepted)."""
        args = []
        for f in fields(self):
            if role in f.metadata["roles"] and f.metadata["flag"] and not f.metadata.get("secret"):
                value = getattr(self, f.name)
                if isinstance(value, bool):
                    args.append(_flag(f.name) if value else _flag(f"no_{f.name}"))
                else:
                    args += [_flag(f.name), ",".join(value) if isinstance(value, tuple) else str(value)]
        return args

    def env_for(self, role: str) -> dict[str, str]:
        """The secrets a child playing `role` needs, as variables: other users can read command lines."""
        return {
            _env_names(f)[0]: getattr(self, f.name)
            for f in fields(self)
            if role in f.metadata["roles"] and f.metadata.get("secret") and getattr(self, f.name)
        }


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of one command: `all` (the one command) takes every option, a half takes its own."""
    for f in fields(Config):
        meta = f.metadata
        if command != "all" and command not in meta["roles"]:
            continue
        shown = f"{meta['help']} (env {', '.join(_env_names(f))}; default {_show(f.default)})"
        if isinstance(f.default, bool):
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=shown)
            continue
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            action="extend" if meta.get("repeat") else "store",
            type=_parser_for(f),
            choices=meta.get("choices"),
            default=argparse.SUPPRESS,
            help=shown if meta["flag"] else argparse.SUPPRESS,
        )


def from_namespace(ns: argparse.Namespace, environ=os.environ) -> Config:
    values = {}
    for f in fields(Config):
        if hasattr(ns, f.name):
            value = getattr(ns, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
            continue
        name = next((n for n in _env_names(f) if n in environ), None)
        if name is None:
            continue
        try:
            values[f.name] = _parser_for(f)(environ[name])
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise SystemExit(f"kernels-gateway: bad value for {name}: {e}") from None
        choices = f.metadata.get("choices")
        if choices and values[f.name] not in choices:
            raise SystemExit(f"kernels-gateway: {name} must be one of {', '.join(choices)}")
    config = Config(**values)
    if problem := _problem(config):
        raise SystemExit(f"kernels-gateway: {problem}")
    return config


# Every number an option takes is 0 or more, but these.
POSITIVE = frozenset({"workers", "kernel_start_timeout", "cull_interval"})
PORT = frozenset({"port"})


def _problem(config: Config) -> str | None:
    """What makes this configuration unusable, said before any process or kernel starts."""
    for f in fields(config):
        value = getattr(config, f.name)
        if not f.metadata["flag"] or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if f.name in POSITIVE and not value > 0:
            return f"{_flag(f.name)} must be more than 0, not {value:g}"
        if value < 0 or (f.name in PORT and value > 65535):
            return f"{_flag(f.name)} must be {'a port from 0 to 65535' if f.name in PORT else '0 or more'}, not {value:g}"
    if config.allow_credentials and "*" in config.allow_origin:
        return ("--allow-credentials cannot go with --allow-origin '*': any page could then use the gateway "
                "with its visitors' credentials; list the origins instead")
    if not config.certfile and (config.keyfile or config.client_ca):
        return "--keyfile and --client-ca need --certfile"
    if config.preload and config.fork == "none":
        return "--preload needs forking: drop --fork none, or drop --preload"
    return None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_names(f) -> list[str]:
    own = f.metadata["env"] or f"KERNELS_GATEWAY_{f.name.upper()}"
    return [own] + ([f.metadata["kg"]] if f.metadata["kg"] else [])


def _parser_for(f):
    meta = f.metadata
    if "parse" in meta:
        return meta["parse"]
    if meta.get("upper"):
        return str.upper
    kind = type(f.default)
    if kind is bool:
        return _bool
    if issubclass(kind, Path):
        return Path
    return kind


def _show(default) -> str:
    if isinstance(default, tuple):
        return ",".join(default) or "none"
    return str(default) if default != "" else "none"
