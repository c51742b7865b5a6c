"""Side-by-side benchmarks of this gateway, Jupyter Kernel Gateway and raw jupyter_client: `python -m benchmarks`."""
