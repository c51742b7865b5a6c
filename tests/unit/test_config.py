"""Configuration: flags over our variables over Kernel Gateway's, and the base path forms."""

from __future__ import annotations

import pytest

from kernels_gateway.cli import parser
from kernels_gateway.config import from_namespace


def config(argv, environ=None):
    return from_namespace(parser().parse_args(argv), environ or {})


def test_defaults():
    c = config([])
    assert (c.ip, c.port, c.base, c.workers, c.initial_kernels) == ("127.0.0.1", 8000, "", 1, 1)


def test_precedence():
    environ = {"KG_PORT": "1", "KERNELS_GATEWAY_PORT": "2", "KG_IP": "0.0.0.0", "KERNEL_NAME": "ir"}
    assert config([], environ).port == 2
    assert config(["--port", "3"], environ).port == 3
    assert config([], {"KG_PORT": "1"}).port == 1
    assert config([], environ).ip == "0.0.0.0"
    assert config([], environ).kernel_name == "ir"


@pytest.mark.parametrize("given, base", [("/", ""), ("", ""), ("krn", "/krn"), ("/krn/", "/krn"), ("a/b/", "/a/b")])
def test_base_path_forms(given, base):
    assert config(["--base-path", given]).base == base


def test_lists_and_choices():
    assert config([], {"KG_ENV_WHITELIST": "A, B,,C"}).env_allow == ("A", "B", "C")
    with pytest.raises(SystemExit):
        config([], {"KERNELS_GATEWAY_TRANSPORT": "udp"})
    with pytest.raises(SystemExit):
        config([], {"KG_PORT": "eighty"})


def test_child_arguments_round_trip():
    c = config(["--base-path", "/krn", "--max-kernels", "4", "--env-allow", "A,B"])
    web = config(["web", *c.args_for("web")])
    supervisor = config(["supervisor", *c.args_for("supervisor")])
    assert web.base == "/krn" and web.runtime_dir == c.runtime_dir
    assert supervisor.max_kernels == 4 and supervisor.env_allow == ("A", "B")
