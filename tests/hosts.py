"""Other hosts on this machine, for kernels launched over SSH: each a network namespace with an address
of its own (a veth pair to the root namespace, where the gateway runs), a process-id namespace of its
own (a remote pid means nothing here, as on a real host), and a real OpenSSH server with a host key and
an authorized client key generated for the test. The hosts share the filesystem, so ipykernel and
gateway_provisioners' launcher are "installed" on them already.

Every host is torn down when its block ends, whatever happened: its pid namespace's init is killed
(which kills every process of the host, kernels included), then its namespace and files go.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
NETNS_PREFIX = "kgr"  # every namespace these tests make is named so, and only these are removed
SUBNET = "10.231"


def missing() -> str:
    """Why hosts cannot be made here, or '' when they can."""
    if os.geteuid() != 0:
        return "network namespace hosts need root (CI runs as root)"
    for tool in ("ip", "unshare", "ssh-keygen", "tini"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if not os.path.exists(SSHD):
        return "openssh-server is not installed (apt-get install openssh-server)"
    if importlib.util.find_spec("gateway_provisioners") is None:
        return "gateway_provisioners is not installed (pip install -e '.[test]')"
    return ""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    name: str  # the network namespace
    address: str
    gateway_side: str  # the root namespace's end of the link
    link: str  # the root namespace's veth
    folder: Path
    init: subprocess.Popen | None = None  # `ip netns exec ... unshare ...`; its child is the host's init

    def run(self, *argv: str, timeout: float = 30) -> str:
        """A command in the host's network and pid namespaces (as if over SSH), its stdout."""
        pid = self.init_pid()
        found = subprocess.run(["nsenter", "-t", str(pid), "-n", "-p", "-m", "--", *argv],
                               capture_output=True, text=True, timeout=timeout)
        return found.stdout

    def init_pid(self) -> int:
        """The pid (in the root namespace) of the host's init: unshare's only child."""
        children = Path(f"/proc/{self.unshare_pid()}/task/{self.unshare_pid()}/children").read_text().split()
        return int(children[0])

    def unshare_pid(self) -> int:
        assert self.init is not None
        return self.init.pid

    def processes(self) -> list[str]:
        """'PID PPID command line' of every process on the host (its own /proc), but its init's and sshd's."""
        out = self.run("ps", "-ww", "-eo", "pid=,ppid=,args=")
        return [line.strip() for line in out.splitlines()
                if line.split(None, 2)[2:] and not line.split(None, 2)[2].startswith(("tini", "sshd", "ps "))]

    def listening(self) -> set[tuple[str, int]]:
        """(address, port) of every TCP socket listening on the host."""
        out = self.run("ss", "-Htln")
        found = set()
        for line in out.splitlines():
            local = line.split()[3]
            address, _, port = local.rpartition(":")
            found.add((address.strip("[]"), int(port)))
        return found

    def kill_everything(self) -> None:
        """Every process of the host at once, sshd included: the host is lost."""
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, IndexError):
            os.kill(self.init_pid(), signal.SIGKILL)

    def link_down(self) -> None:
        _run("ip", "link", "set", self.link, "down")

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[None]:
        """No route to the host for the block's duration (connects fail with EHOSTUNREACH), the host and
        its processes untouched: as a network partition looks from here."""
        _run("ip", "route", "add", "unreachable", f"{self.address}/32")
        try:
            yield
        finally:
            subprocess.run(["ip", "route", "del", "unreachable", f"{self.address}/32"], capture_output=True, timeout=30)


    @contextlib.contextmanager
    def black_hole(self) -> Iterator[None]:
        """Every packet from here to the host silently lost for the block's duration, as when a host
        vanishes or a firewall drops: connects, established connections included, hear nothing and wait
        for their timeouts. (A permanent neighbour entry sends the host's frames to an address nobody
        has, which needs no packet filter.)"""
        _run("ip", "neigh", "replace", self.address, "lladdr", "02:00:00:00:00:01", "dev", self.link, "nud", "permanent")
        try:
            yield
        finally:
            subprocess.run(["ip", "neigh", "del", self.address, "dev", self.link], capture_output=True, timeout=30)


def _sshd_config(host: Host, client_key: Path) -> Path:
    config = host.folder / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress {host.address}",
        f"HostKey {host.folder / 'host_key'}",
        f"AuthorizedKeysFile {client_key}.pub",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",  # the keys live in a temporary folder
        "PidFile none",
        "MaxStartups 100",
        "MaxSessions 100",
        "LogLevel ERROR",
        "",
    ]))
    return config


@contextlib.contextmanager
def hosts(count: int = 2) -> Iterator[tuple[list[Host], dict[str, str]]]:
    """`count` hosts, and the environment a gateway needs to reach them over SSH: a HOME whose .ssh
    holds the client key and the hosts' keys (paramiko reads both there), no agent, and the launch's
    log folder. Torn down when the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="remote-hosts-", dir="/tmp"))
    home = folder / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    client_key = home / ".ssh" / "id_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kernels-gateway-tests", "-f", str(client_key))
    made: list[Host] = []
    tag = f"{os.getpid() % 10000}"
    try:
        known = []
        for number in range(1, count + 1):
            # One /24 per host and per test process, so concurrent runs never collide.
            third = (os.getpid() * 7 + number) % 250 + 1
            host = Host(name=f"{NETNS_PREFIX}-{tag}-{number}", address=f"{SUBNET}.{third}.2",
                        gateway_side=f"{SUBNET}.{third}.1", link=f"{NETNS_PREFIX}{tag}g{number}",
                        folder=folder / f"host{number}")
            host.folder.mkdir()
            made.append(host)
            inside = f"{NETNS_PREFIX}{tag}h{number}"
            _run("ip", "netns", "add", host.name)
            _run("ip", "link", "add", host.link, "type", "veth", "peer", "name", inside)
            _run("ip", "link", "set", inside, "netns", host.name)
            _run("ip", "addr", "add", f"{host.gateway_side}/24", "dev", host.link)
            _run("ip", "link", "set", host.link, "up")
            for argv in (("ip", "addr", "add", f"{host.address}/24", "dev", inside), ("ip", "link", "set", inside, "up"),
                         ("ip", "link", "set", "lo", "up"), ("ip", "route", "add", "default", "via", host.gateway_side)):
                _run("ip", "netns", "exec", host.name, *argv)
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.folder / "host_key"))
            known.append(f"{host.address} {(host.folder / 'host_key.pub').read_text().split(' ')[0]} "
                         f"{(host.folder / 'host_key.pub').read_text().split(' ')[1]}")
            config = _sshd_config(host, client_key)
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
            with open(host.folder / "sshd.log", "w") as log:
                host.init = subprocess.Popen(
                    ["ip", "netns", "exec", host.name, "unshare", "--pid", "--fork", "--mount-proc",
                     "tini", "-s", "--", SSHD, "-D", "-e", "-f", str(config)],
                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                )
        (home / ".ssh" / "known_hosts").write_text("\n".join(known) + "\n")
        for host in made:
            _wait_for_sshd(host)
        env = {"HOME": str(home), "SSH_AUTH_SOCK": "", "GP_KERNEL_LOG_DIR": str(folder)}
        yield made, env
    finally:
        for host in made:
            if host.init is not None:
                host.kill_everything()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(host.init.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.init.wait(10)
            subprocess.run(["ip", "link", "del", host.link], capture_output=True, timeout=30)
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True, timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_sshd(host: Host, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (host.address, 22) not in _listening_or_empty(host):
        if host.init.poll() is not None:
            raise RuntimeError(f"sshd on {host.name} exited: {(host.folder / 'sshd.log').read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd on {host.name} is not listening: {(host.folder / 'sshd.log').read_text()}")
        time.sleep(0.05)


def _listening_or_empty(host: Host) -> set[tuple[str, int]]:
    try:
        return host.listening()
    except (IndexError, FileNotFoundError, ValueError):
        return set()


def ssh_kernelspec(folder: Path, name: str, hosts: list[Host], *extra: str) -> Path:
    """A kernelspec made by gateway_provisioners' own tool for these hosts, under `folder` (for
    JUPYTER_PATH), with root allowed (the hosts' only user) and this interpreter as the hosts' python."""
    prefix = folder / "prefix"
    argv = [str(Path(sys.executable).with_name("jupyter-ssh-spec")), "install", "--prefix", str(prefix),
            "--kernel-name", name, "--unauthorized-users", "nobody", *extra]
    for host in hosts:
        argv += ["--remote-hosts", host.address]
    _run(*argv)
    spec_dir = prefix / "share" / "jupyter" / "kernels" / name
    spec_file = spec_dir / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["argv"][0] = sys.executable
    spec_file.write_text(json.dumps(spec, indent=1))
    return prefix / "share" / "jupyter"
