"""The environment policy built from the configuration: the gateway's own variables reach no kernel."""

from __future__ import annotations

from kernels_gateway.config import Config
from kernels_gateway.supervisor.environment import EnvironmentPolicy, is_secret


def test_the_policy_of_a_configuration_keeps_the_gateways_variables_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("KERNELS_GATEWAY_AUTH_TOKEN", "t")
    monkeypatch.setenv("KG_AUTH_TOKEN", "t")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/notify")
    monkeypatch.setenv("HOME_OF_A_KERNEL", "kept")
    policy = EnvironmentPolicy.of(Config(runtime_dir=tmp_path, env_allow=("A",), env_inherit=("B",)))
    assert (policy.allow, policy.inherit) == ({"A"}, {"B"})
    assert {"KERNELS_GATEWAY_AUTH_TOKEN", "KG_AUTH_TOKEN", "NOTIFY_SOCKET"} <= policy.secret
    assert "HOME_OF_A_KERNEL" not in policy.secret
    assert is_secret("WATCHDOG_USEC") and not is_secret("PATH")
