"""The template process: imports ipykernel (and the --preload modules) once, then forks a kernel for each
request of the supervisor, so that a start costs a fork instead of half a CPU-second of imports.

    python -m kernels_gateway.supervisor.forkserver FD [MODULE,MODULE...]

FD is the template's end of a SOCK_SEQPACKET socketpair. Every message is one JSON object:
the template says {"ready": pid} or {"error": why} once its imports are done; a request
{"argv", "env", "cwd"} comes with three descriptors (the kernel's stdin, stdout and stderr) and is
answered {"pid": pid} with the kernel's pidfd, or {"error": why}. End of file means the supervisor is
gone: the template exits, and its kernels, each in its own session, run on (adopted by the next one).

The template stays a plain process: one thread, no event loop, no ZMQ context, since none of them
survives a fork; it refuses to fork if anything it imported started one. Its kernels are not its
children but the supervisor's (see `fork`), so they are watched, reaped and adopted as launched ones are.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import json
import os
import runpy
import socket
import sys
import traceback

MAX_MESSAGE = 4 * 2**20
# What an ipykernel imports before it answers: the application, and what its initialisation brings in
# (the shell, the debugger, history's sqlite3).
KERNEL_MODULES = ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger",
                  "IPython.core.history", "IPython.core.debugger", "IPython.core.oinspect",
                  "IPython.core.completerlib", "IPython.core.logger", "IPython.extensions.storemagic",
                  "IPython.utils.wildcard", "tornado.platform.asyncio", "faulthandler", "sqlite3", "pdb",
                  "setproctitle")


def send(channel: socket.socket, message: dict, fds: list[int] = ()) -> None:
    socket.send_fds(channel, [json.dumps(message).encode()], list(fds))


def receive(channel: socket.socket, max_fds: int = 0) -> tuple[dict | None, list[int]]:
    data, fds, _, _ = socket.recv_fds(channel, MAX_MESSAGE, max_fds)
    return (json.loads(data) if data else None), fds


def quiesce_thread_pools() -> None:
    """OpenBLAS starts worker threads as numpy is imported; it stops them itself before a fork (its
    pthread_atfork handler) and starts them again when a kernel needs them. Stopping them now makes the
    template single-threaded again, as the check before every fork requires."""
    libraries = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.rsplit("/", 1)[-1]}
    for path in libraries:
        shutdown = getattr(ctypes.CDLL(path), "blas_thread_shutdown_", None)
        if shutdown is not None:
            shutdown()


def why_not_fork() -> str:
    """What would not survive a fork, if anything is there."""
    if len(os.listdir("/proc/self/task")) > 1:
        return "the template has more than one thread"
    zmq = sys.modules.get("zmq")
    if zmq is not None and zmq.Context._instance is not None:
        return "the template has a ZMQ context"
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and (
        asyncio.events._get_running_loop() is not None
        or getattr(getattr(asyncio.events._event_loop_policy, "_local", None), "_loop", None) is not None
    ):
        return "the template has an event loop"
    return ""


def fork(request: dict, fds: list[int]) -> tuple[int, int]:
    """The kernel's pid and pidfd. The kernel is forked twice, so that it is the template's grandchild and,
    once the middle process exits, the child of the supervisor (a subreaper for the duration of the
    request): its parent, who reaps it and learns its exit code, as for a launched kernel. The middle
    process is reaped here; the kernel, a zombie at worst until its parent reaps it, cannot be
    mistaken for another process when its pidfd is opened."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            pid = os.fork()
            if pid == 0:
                become_kernel(request, fds)  # never returns
            os.write(write_end, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        os.waitpid(middle, 0)
        pid = int(os.read(read_end, 32) or b"0")
    finally:
        os.close(read_end)
    if not pid:
        raise OSError("the kernel could not be forked")
    return pid, os.pidfd_open(pid)


def become_kernel(request: dict, fds: list[int]) -> None:
    """In the child: what a launched kernel would have (own session, descriptors, environment, working
    directory, argv, random state), then ipykernel_launcher."""
    code = 1
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the channel, other kernels' pidfds, what imports opened
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import setproctitle

        # `python -m ipykernel_launcher ARGS`, as the interpreter would run it: the cwd first on sys.path, the
        # launcher as __main__ and argv[0]; named so in ps and /proc, where the template's title would show.
        sys.argv = ["-m", *request["argv"]]
        sys.path[0] = os.getcwd()
        setproctitle.setproctitle(" ".join([sys.executable, "-m", "ipykernel_launcher", *request["argv"]]))
        reseed()
        runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        # What the interpreter does on its way out, never the template's loop.
        try:
            import threading

            threading._shutdown()
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def reseed() -> None:
    """`random` reseeds itself after a fork; numpy's global generator does not."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def serve(channel: socket.socket) -> int:
    send(channel, {"ready": os.getpid()})
    while True:
        request, fds = receive(channel, max_fds=3)
        if request is None:
            return 0
        try:
            refusal = why_not_fork()
            if refusal or len(fds) != 3:
                send(channel, {"error": refusal or "a request needs stdin, stdout and stderr"})
                continue
            pid, pidfd = fork(request, fds)
            try:
                send(channel, {"pid": pid}, [pidfd])
            finally:
                os.close(pidfd)
        except Exception as e:
            send(channel, {"error": f"{type(e).__name__}: {e}"})
        finally:
            for fd in fds:
                os.close(fd)


def main(argv: list[str]) -> int:
    channel = socket.socket(fileno=int(argv[0]))
    modules = [*KERNEL_MODULES, *(m for m in (argv[1:] or [""])[0].split(",") if m)]
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as e:  # SystemExit included: a module may exit as it is imported
            send(channel, {"error": f"cannot import {name}: {type(e).__name__}: {e}"})
            return 1
    quiesce_thread_pools()
    # What is imported now stays out of the collector's sight, so that no collection in a kernel writes to
    # (and so copies) the pages it shares with the template.
    gc.freeze()
    import setproctitle

    # Claims the room of argv and the environment for the kernels' titles now, while the environment is whole.
    setproctitle.setproctitle(setproctitle.getproctitle())
    return serve(channel)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
