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


KERNEL_GATEWAY_NAMES = {
    "KG_PORT": ("port", "9000", 9000),
    "KG_IP": ("ip", "0.0.0.0", "0.0.0.0"),
    "KG_BASE_URL": ("base", "/kg/", "/kg"),
    "KG_AUTH_TOKEN": ("auth_token", "t0k", "t0k"),
    "KG_ALLOW_ORIGIN": ("allow_origin", "*", ("*",)),
    "KG_ALLOW_CREDENTIALS": ("allow_credentials", "true", True),
    "KG_ALLOW_HEADERS": ("allow_headers", "Content-Type, X-A", ("Content-Type", "X-A")),
    "KG_ALLOW_METHODS": ("allow_methods", "GET,POST", ("GET", "POST")),
    "KG_EXPOSE_HEADERS": ("expose_headers", "Location", ("Location",)),
    "KG_MAX_AGE": ("max_age", "60", 60),
    "KG_MAX_KERNELS": ("max_kernels", "3", 3),
    "KG_DEFAULT_KERNEL_NAME": ("default_kernel_name", "ir", "ir"),
    "KG_FORCE_KERNEL_NAME": ("force_kernel_name", "ir", "ir"),
    "KG_LIST_KERNELS": ("list_kernels", "False", False),
    "KG_ENV_WHITELIST": ("env_allow", "A,B", ("A", "B")),
    "KG_ENV_PROCESS_WHITELIST": ("env_inherit", "HOME,LANG", ("HOME", "LANG")),
    "KG_PRESPAWN_COUNT": ("initial_kernels", "4", 4),
}


@pytest.mark.parametrize("name", KERNEL_GATEWAY_NAMES)
def test_kernel_gateway_names(name):
    attribute, value, expected = KERNEL_GATEWAY_NAMES[name]
    assert getattr(config([], {name: value}), attribute) == expected


def test_every_option_has_a_flag_and_a_variable():
    c = config(["--auth-token", "t", "--allow-origin", "http://a,http://b", "--max-age", "5"])
    assert (c.auth_token, c.allow_origin, c.max_age) == ("t", ("http://a", "http://b"), 5)
    assert config([], {"KERNELS_GATEWAY_LIST_KERNELS": "no"}).list_kernels is False
    assert config([], {"KERNELS_GATEWAY_ENV_INHERIT": "X"}).env_inherit == ("X",)


def test_secrets_travel_as_variables_only():
    c = config(["--auth-token", "s3cret", "--allow-origin", "*"])
    assert "s3cret" not in c.args_for("web") and "--allow-origin" in c.args_for("web")
    assert c.env_for("web") == {"KERNELS_GATEWAY_AUTH_TOKEN": "s3cret"}
    assert c.env_for("supervisor") == {}
    assert config(["web", *c.args_for("web")], c.env_for("web")).auth_token == "s3cret"
    assert config([]).env_for("web") == {}


@pytest.mark.parametrize("argv, environ, message", [
    (["--pool", "python3"], {}, "--pool takes NAME=N, not 'python3'"),
    (["--pool", "python3=1,=2"], {}, "--pool takes NAME=N, not '=2'"),
    ([], {"KERNELS_GATEWAY_POOL": "python3=x"}, "--pool takes NAME=N, not 'python3=x'"),
    (["--workers", "0"], {}, "--workers must be more than 0, not 0"),
    (["--port", "70000"], {}, "--port must be a port from 0 to 65535, not 70000"),
    (["--shutdown-wait", "-1"], {}, "--shutdown-wait must be 0 or more, not -1"),
    (["--cull-interval", "0"], {}, "--cull-interval must be more than 0, not 0"),
    (["--keyfile", "key.pem"], {}, "--keyfile and --client-ca need --certfile"),
])
def test_bad_options_are_refused_where_the_configuration_is_built(capsys, argv, environ, message):
    with pytest.raises(SystemExit) as refused:
        config(argv, environ)
    assert message in f"{refused.value.code}{capsys.readouterr().err}"


def test_pool_sizes():
    assert config([]).pool_sizes == (("python3", 1),)
    assert config(["--default-kernel-name", "ir"]).pool_sizes == (("ir", 1),)
    assert config(["--pool", "none"]).pool_sizes == ()
    assert config(["--pool", "python3=2", "--pool", "ir=1"]).pool_sizes == (("python3", 2), ("ir", 1))


def test_one_url_builder():
    assert config(["--port", "9"]).url() == "http://127.0.0.1:9/api/kernels"
    assert config(["--base-path", "krn", "--certfile", "c.pem"]).url("::1", 8, "/api/health") == \
        "https://[::1]:8/krn/api/health"
