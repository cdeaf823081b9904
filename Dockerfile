# syntax=docker/dockerfile:1
# One image, three entry points: `minedraft serve target|draft|gateway` (see docker-compose.yml).
#
#   docker build -t minedraft:latest .
#   docker run --gpus all -p 50051:50051 minedraft:latest serve gateway --target HOST:50052 --draft HOST:50053
#
# The base ships CUDA 12 + cuDNN + a CUDA build of torch (>= 2.6, which transformers 5 needs), so
# `pip install .[gpu]` only adds the package, its light dependencies and CuPy (CUDA IPC). The same
# image runs on CPU-only hosts (the compose `cpu` profile); pass --build-arg BASE_IMAGE=... to use
# another CUDA/torch base.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

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
RUN pip install ".[gpu]" \
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
# health check below asks the right port; compose also defines its own per-service checks).
EXPOSE 50051 50052 50053

# Shell form on purpose: ${PORT} is expanded when the check runs. `minedraft health` exits 0 only
# when grpc.health.v1 reports SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD minedraft health "127.0.0.1:${PORT}" || exit 1

ENTRYPOINT ["minedraft"]
CMD ["serve", "gateway", "--bind", "0.0.0.0", "--port", "50051"]
