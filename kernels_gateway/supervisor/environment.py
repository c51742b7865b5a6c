"""A kernel's environment: what a start request may set, and what a kernel inherits from the supervisor."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import Config
from ..errors import BadRequest

MAX_ENV_VALUE = 32 * 1024
# Variables that belong to the gateway or to the service manager, never to a kernel. Every variable of
# the gateway's own configuration is among them, since some of it is secret (a token).
SECRET_ENV = frozenset({"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"})
SECRET_ENV_PREFIXES = ("KERNELS_GATEWAY_", "KG_")
# A kernel's id is the gateway's to choose; provisioners (and Jupyter Server's clients) read it from
# KERNEL_ID, so a request setting it would pass for another kernel.
RESERVED = frozenset({"KERNEL_ID"})
# A name is text the operating system and every shell can hold: no '=', no NUL, no newline or other
# control character (a newline in a name breaks `env` output and whatever parses it, such as a
# provisioner writing the environment into a pod or a script).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_secret(name: str) -> bool:
    """Whether a variable of the gateway's environment is the gateway's own (or its service manager's)."""
    return name in SECRET_ENV or name.startswith(SECRET_ENV_PREFIXES)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class EnvironmentPolicy:
    allow: frozenset[str] = frozenset()
    inherit: frozenset[str] = frozenset()  # empty: inherit every name but the secrets
    secret: frozenset[str] = frozenset()

    @classmethod
    def of(cls, config: Config) -> EnvironmentPolicy:
        """The policy of --env-allow and --env-inherit, with the gateway's own variables kept secret."""
        return cls(frozenset(config.env_allow), frozenset(config.env_inherit),
                   frozenset(name for name in os.environ if is_secret(name)))

    def requested(self, requested: Mapping[str, str]) -> dict[str, str]:
        """The names of a start request's env that may reach the kernel; others are dropped. Its shape,
        names and string values, was checked with the start operation (operations.py)."""
        allowed = {}
        for key, value in requested.items():
            if key in RESERVED:
                raise BadRequest(f"env cannot set {key}: a kernel's id is the gateway's to choose")
            if not (key and "=" not in key and not _CONTROL.search(key) and _encodable(key)
                    and "\0" not in value and _encodable(value) and len(value) <= MAX_ENV_VALUE):
                raise BadRequest(
                    f"env entry {key[:100]!r} cannot be set: a name needs no '=' and no control character "
                    f"(newline, NUL, ...), names and values no NUL or unpaired surrogate, and values at most "
                    f"{MAX_ENV_VALUE} characters"
                )
            if key.startswith("KERNEL_") or key in self.allow:
                allowed[key] = value
        return allowed

    def kernel(self, requested: Mapping[str, str]) -> dict[str, str]:
        """The supervisor's environment (all of it, or PATH and the --env-inherit names) without the
        gateway's secrets, plus the allowed requested names.

        JPY_PARENT_PID=1 names init as the kernel's parent: ipykernel watches no parent for it (init
        never goes away), so kernels outlive the supervisor, and it then takes the kernel for one a
        manager started, so it does not print its `ipython kernel` banner to the gateway's log.
        """
        inherit = self.inherit
        env = {
            k: v for k, v in os.environ.items()
            if k not in self.secret and (not inherit or k in inherit or k == "PATH")
        }
        env.update(requested)
        env["JPY_PARENT_PID"] = "1"
        return env
