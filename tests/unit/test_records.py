"""Kernel records: written whole or not at all, and trusted only when they are ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kernels_gateway.supervisor.adoption import live_processes
from kernels_gateway.errors import BadRequest
from kernels_gateway.supervisor.environment import EnvironmentPolicy
from kernels_gateway.supervisor.process import start_time
from kernels_gateway.supervisor.records import RUNNING, STARTING, Records, UntrustedPath, own_directory

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")


def test_a_save_that_fails_leaves_the_previous_record_and_no_temporary(tmp_path, monkeypatch):
    records = Records(tmp_path)
    kernel_id = str(uuid.uuid4())
    records.save(kernel_id, {"id": kernel_id, "state": STARTING})

    def full(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(OSError):
        records.save(kernel_id, {"id": kernel_id, "state": RUNNING})
    monkeypatch.undo()
    assert [p.name for p in records.folder.iterdir()] == [f"{kernel_id}.json"]
    assert records.load_all() == [{"id": kernel_id, "state": STARTING}]


def test_records_are_private(tmp_path):
    records = Records(tmp_path)
    records.save("x", {"id": "x"})
    assert oct(os.stat(records.folder / "x.json").st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path).st_mode & 0o777) == oct(os.stat(records.folder).st_mode & 0o777) == "0o700"


def test_symbolic_links_are_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UntrustedPath, match="symbolic link"):
        own_directory(tmp_path / "link")
    records = Records(tmp_path / "rt")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"id": "planted"}))
    (records.folder / "planted.json").symlink_to(elsewhere)
    assert records.load_all() == []
    assert elsewhere.exists()  # refused, and left alone


@as_root
def test_what_another_user_owns_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UntrustedPath, match="belongs to user 65534"):
        Records(theirs)
    records = Records(tmp_path / "rt")
    planted = records.folder / "planted.json"
    planted.write_text(json.dumps({"id": "planted"}))
    os.chown(planted, 65534, 65534)
    assert records.load_all() == []


def test_a_record_proves_its_process_by_more_than_a_pid(tmp_path):
    connection_file = tmp_path / f"kernel-{uuid.uuid4()}.json"
    named = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(connection_file)],
                             start_new_session=True)
    unnamed = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        # Until a child has exec'd, its command line is still this test's own.
        deadline = time.monotonic() + 10
        for child, program in ((named, sys.executable), (unnamed, "sleep")):
            while not Path(f"/proc/{child.pid}/cmdline").read_bytes().startswith(program.encode()):
                assert time.monotonic() < deadline, f"{program} never started"
                time.sleep(0.01)
        def record(pid, started=None, state=RUNNING, path=connection_file):
            return {"state": state, "connection_file": str(path), "provisioner": {"pid": pid},
                    "start_time": start_time(pid) if started is None else started}

        assert live_processes(record(named.pid), tmp_path) == [named.pid]
        assert live_processes(record(named.pid, started=1), tmp_path) == []  # a recycled pid
        assert live_processes(record(unnamed.pid), tmp_path) == []  # another process
        assert live_processes(record(named.pid, path=tmp_path / "other.json"), tmp_path) == []
        assert live_processes(record(None, state=STARTING), tmp_path) == [named.pid]  # found by its file
    finally:
        for process in (named, unnamed):
            process.kill()
            process.wait()


@pytest.mark.parametrize("name", ["KERNEL_ID", "KERNEL_A\nB", "KERNEL_\x1b", "A=B", "", "KERNEL_\x7f"])
def test_requests_cannot_set_the_kernel_id_nor_control_characters(name):
    with pytest.raises(BadRequest):
        EnvironmentPolicy().requested({name: "x"})


def test_kernels_inherit_no_secret_and_watch_no_parent(monkeypatch):
    monkeypatch.setenv("KG_AUTH_TOKEN", "secret")
    env = EnvironmentPolicy(secret=frozenset({"KG_AUTH_TOKEN"})).kernel({"KERNEL_X": "1"})
    assert "KG_AUTH_TOKEN" not in env and env["KERNEL_X"] == "1" and env["JPY_PARENT_PID"] == "1"
