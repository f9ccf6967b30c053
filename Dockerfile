# syntax=docker/dockerfile:1
# The A100 worker: a CUDA image with FaithForge installed, running a Prefect process worker on the `a100` pool.
#
#   docker build -t faithforge-a100 .
#   docker run -d --gpus all --restart unless-stopped \
#     -e PREFECT_API_URL=http://<server>:4200/api \
#     -e FAITHFORGE_STORAGE_URL=s3://<bucket>/faithforge \
#     -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
#     -v faithforge-worker:/root/.faithforge-worker \
#     faithforge-a100
#
# The same image serves the `a100-docker` pool: a docker worker on the VM starts each flow run in it with the
# GPU requested (container_create_kwargs.device_requests) and replaces the command below.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# torch first, from the CUDA 12.8 wheel index (the project pins no torch build), then the project's
# dependencies; storage backends for S3 and GCS, so FAITHFORGE_STORAGE_URL may point at either.
RUN pip install --upgrade pip \
    && pip install --index-url https://download.pytorch.org/whl/cu128 "torch>=2.4"

WORKDIR /opt/faithforge
COPY pyproject.toml README.md ./
COPY faithforge ./faithforge
COPY flows ./flows
COPY tasks ./tasks
COPY gpu ./gpu
COPY deployments ./deployments
COPY configs ./configs
RUN pip install ".[postgres]" s3fs gcsfs \
    && python -c "import faithforge.flows.train, faithforge.tasks.offload, faithforge.gpu; print('faithforge imports')"

# The worker's workspace (inputs fetched from storage, caches, checkpoints): mount a volume to keep it.
ENV FAITHFORGE_WORKSPACE=/root/.faithforge-worker \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
VOLUME ["/root/.faithforge-worker"]

# One GPU job at a time per worker (--limit 1); the process worker runs each flow run as a child process,
# so all of its GPU memory is freed when the run ends.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["prefect", "worker", "start", "--pool", "a100", "--type", "process", "--limit", "1"]
