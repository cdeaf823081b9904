# One image, three entry points: `minedraft serve target|draft|gateway` (see docker-compose.yml).
#
#   docker build -t minedraft:latest .
#   docker run --gpus all -p 50051:50051 minedraft:latest serve gateway --target HOST:50052 --draft HOST:50053
#
# The default base ships CUDA 12 + cuDNN + a CUDA build of torch (>= 2.6, which transformers 5 needs),
# so `pip install .[gpu]` only adds the package, its light dependencies and CuPy (CUDA IPC).
# Build arguments:
#   BASE_IMAGE  another base (a local one for air-gapped builds: see README "Air-gapped build").
#   EXTRAS      extras to install, default `gpu` (CuPy); empty (`--build-arg EXTRAS=`) for a CPU image.
# When the base already holds every dependency (and setuptools), the build needs no network at all:
# pip keeps what is installed and builds the package without an isolated build environment.
# No `# syntax=` line on purpose: it makes BuildKit fetch a frontend image from Docker Hub.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}
ARG EXTRAS=gpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    PORT=50051

WORKDIR /opt/minedraft
# .dockerignore keeps tests, results, VCS data and local models out of the context.
COPY . .
# Non-editable install; torch from the base image already satisfies the requirement, so pip keeps it.
# --no-build-isolation when the base has setuptools: an isolated build would download it.
RUN if python -c "import setuptools" 2>/dev/null; then isolation=--no-build-isolation; fi \
 && pip install $isolation ".${EXTRAS:+[${EXTRAS}]}" \
 && cd / && minedraft --help > /dev/null

# Run as an unprivileged user with its own home (Hugging Face / torch caches go there).
RUN groupadd --system --gid 10001 minedraft \
 && useradd --system --uid 10001 --gid minedraft --create-home --home-dir /home/minedraft \
        --shell /usr/sbin/nologin minedraft
USER minedraft
WORKDIR /home/minedraft
ENV HOME=/home/minedraft \
    HF_HOME=/home/minedraft/.cache/huggingface

# gateway 50051, target 50052, draft 50053 (set PORT to the one the container serves so the
# health check below asks the right port; compose also defines its own per-service checks);
# the gateway's HTTP API 8000, target and draft /metrics 9101 and 9102.
EXPOSE 50051 50052 50053 8000 9101 9102

# Shell form on purpose: ${PORT} is expanded when the check runs. `minedraft health` exits 0 only
# when grpc.health.v1 reports SERVING; it imports only grpc (~0.3 s), the timeout leaves a wide margin.
HEALTHCHECK --interval=10s --timeout=10s --start-period=120s --retries=3 \
    CMD minedraft health "127.0.0.1:${PORT}" || exit 1

ENTRYPOINT ["minedraft"]
CMD ["serve", "gateway", "--bind", "0.0.0.0", "--port", "50051"]
