"""An ipykernel that greets no iopub subscription, as kernels before ipykernel 7 (and most kernels in
other languages) do: a subscriber learns that its subscription is live only from a status message."""

from ipykernel.iostream import IOPubThread
from ipykernel.kernelapp import IPKernelApp

IOPubThread._send_welcome_message = lambda self, subscription: None

if __name__ == "__main__":
    IPKernelApp.launch_instance()
