# kernels-gateway:  docker build -t kernels-gateway . && docker run -p 8000:8000 kernels-gateway
FROM python:3.12-slim-bookworm

# tini is PID 1: it passes SIGTERM and SIGINT on to kernels-gateway, which stops every kernel, and it
# reaps whatever is orphaned, kernels left by a supervisor that crashed included. Debian's versions are
# not pinned: the base image's release fixes them, and pins would break with every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package, and with it ipykernel (the python3 kernelspec).
COPY pyproject.toml setup.cfg README.md /src/
COPY kernels_gateway /src/kernels_gateway
RUN pip install /src && rm -rf /src

# Numeric, so that Kubernetes can tell runAsNonRoot holds without looking the name up.
RUN useradd --create-home --uid 1000 --user-group kernels
USER 1000:1000
WORKDIR /home/kernels

# Every option is a KERNELS_GATEWAY_* (or KG_*) variable, or an argument after the image name. Give the
# port, base path and token as variables: the HEALTHCHECK reads them too.
ENV KERNELS_GATEWAY_IP=0.0.0.0 \
    KERNELS_GATEWAY_PORT=8000 \
    KERNEL_NAME=python3
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["kernels-gateway", "probe"]
ENTRYPOINT ["tini", "--", "kernels-gateway"]
CMD []
