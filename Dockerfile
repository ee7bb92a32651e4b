# Train, translate, evaluate and serve on a GPU: see docs/gpu.md.
# A slim Python and the torch CI tests (.ci/run pins the same version; tests/test_docker.py checks that
# they agree). PyPI's Linux wheel of torch brings its CUDA libraries: the host needs only its NVIDIA driver.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/hf \
    NMT_RUNS=/runs \
    NMT_CACHE=/data/nmt-cache

WORKDIR /app

# A C compiler: the training recurrence's element-wise kernels (nmt/model/kernels.c) are compiled at first
# use for the CPU they run on, so a run without --gpus trains at the speed it does outside the image rather
# than on PyTorch's slower operations. It is small beside torch's CUDA libraries. The base image's Debian
# release fixes the versions, hence no pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV CC=gcc

# Dependencies in layers of their own (torch, then the rest read from pyproject.toml): editing the code
# does not reinstall them.
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

COPY nmt ./nmt
COPY configs ./configs
COPY scripts ./scripts
RUN pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 1000 nmt \
    && mkdir -p /data/hf /data/nmt-cache /runs \
    && chown -R nmt:nmt /data /runs

USER 1000:1000
VOLUME ["/data", "/runs"]
# nmt serve --host 0.0.0.0 listens here
EXPOSE 8080
ENTRYPOINT ["nmt"]
CMD ["train", "--config", "/app/configs/multi30k_en_de.yaml"]
