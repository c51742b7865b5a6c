"""Which kernels the fork provisioner forks: the rules on their own."""

import sys

from kernels_gateway.supervisor.fork_provisioner import forks_python, import_env_changes


def test_only_this_interpreter_running_ipykernel_is_forked():
    assert forks_python([sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    assert forks_python(["python3", "-m", "ipykernel", "-f", "{connection_file}"])
    assert not forks_python(["/opt/other/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    assert not forks_python([sys.executable, "-m", "my_kernel", "-f", "{connection_file}"])
    assert not forks_python(["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"])
    assert not forks_python([])


def test_names_that_change_what_imports_see_are_found():
    template = {"PATH": "/usr/bin", "HOME": "/root", "PYTHONPATH": "/a"}
    assert import_env_changes({**template, "KERNEL_USERNAME": "ada", "HOME": "/home/ada"}, template) == []
    assert import_env_changes({**template, "PATH": "/opt/bin"}, template) == ["PATH"]
    assert import_env_changes({"PATH": "/usr/bin", "HOME": "/root"}, template) == ["PYTHONPATH"]  # removed
    assert import_env_changes({**template, "LD_PRELOAD": "x.so", "OMP_NUM_THREADS": "1"}, template) == [
        "LD_PRELOAD", "OMP_NUM_THREADS"]
