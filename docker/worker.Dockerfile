# The worker image: RQ worker + torch/scikit-learn (the `[worker]` extra).
#   GPU (default):  docker build -f docker/worker.Dockerfile -t lelastic-worker .
#   CPU only:       docker build -f docker/worker.Dockerfile -t lelastic-worker:cpu \
#                       --build-arg BASE=python:3.11-slim \
#                       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
ARG BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
FROM ${BASE}

# The wheel index torch is installed from (CUDA 12.4 builds by default).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DEBIAN_FRONTEND=noninteractive \
    LELASTIC_DATA_DIR=/data

# The CUDA base has no Python 3.11; python:3.11-slim already has it.
RUN if ! command -v python3.11 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends software-properties-common \
        && add-apt-repository -y ppa:deadsnakes/ppa \
        && apt-get update \
        && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# torch first, from its own index, so that the `[worker]` extra does not pull another build.
RUN pip install --index-url "${TORCH_INDEX}" 'torch>=2.4,<3'
COPY pyproject.toml README.md ./
RUN mkdir -p service workers && touch service/__init__.py workers/__init__.py \
    && pip install '.[worker]' && pip uninstall -y lelastic
COPY service ./service
COPY workers ./workers
RUN pip install --no-deps '.[worker]' && mkdir -p /data

CMD ["lelastic", "worker"]
