"""An ipykernel that ignores shutdown requests and SIGTERM: only SIGKILL stops it."""

import signal

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp


class StubbornKernel(IPythonKernel):
    async def shutdown_request(self, stream, ident, parent):
        pass


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    IPKernelApp.launch_instance(kernel_class=StubbornKernel)
