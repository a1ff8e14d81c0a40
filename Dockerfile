# RunPod serverless worker for ComfyUI. Three final stages, chosen with --target
# (scripts/build_docker.sh --mode does it):
#   baked  (default)  ComfyUI, custom nodes and models realized into the image
#   hybrid            ComfyUI and nodes in the image; models on the network volume, NVMe-cached
#   volume            only the worker; the version is realized on /runpod-volume from a Pod
# Needs BuildKit 0.16 or newer (Docker 27.3+, the built-in Dockerfile frontend 1.10: secret
# mounts with env=); build_docker.sh checks it. Layers and sizes: docs/runpod.md. Base images
# are pinned by tag; pin by digest for production (docs/runpod.md, "Pinning").
#
# Layers every version shares: base, /opt/python (Python, torch, the worker's and ComfyUI's pinned
# requirements), /etc/comfy, /app. A version adds /opt/venv (only the packages its nodes need beyond
# those), /opt/comfy, /opt/cache and, baked, /opt/models.
#
# Secrets: --secret id=hf_token,env=HF_TOKEN --secret id=civitai_token,env=CIVITAI_TOKEN.
# They exist only as environment variables of the one RUN that realizes the version.
# Optional named contexts (--build-context NAME=DIR; empty when not given):
#   wheels   a folder of wheels the torch install may take from (e.g. a CPU torch wheel)
#   sources  local git repositories, mounted at /sources while realizing (file:///sources/... in a spec)

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv
FROM scratch AS wheels
FROM scratch AS sources

# ---------------------------------------------------------------------------------------
# base: OS, the shared libraries ComfyUI and common custom nodes load, uv. No Python packages.
# Python lives in /opt/python/current (a link made in deps); every uv and pip install of the
# shared layer goes into it, not into a venv, so a venv made with --system-site-packages sees
# torch. UV_PYTHON names it because `uv pip --system` alone may settle on another interpreter.
# PYTHON_VERSION=system uses the base's own python3 instead of uv's download (GitHub): uv installs
# with --prefix /opt/python/system, and a .pth file in the base's own
# site-packages puts /opt/python/system/lib/python3.X/site-packages on its path.
FROM ${CUDA_IMAGE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/python/current/bin:$PATH \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON=/opt/python/current/bin/python3 \
    UV_SYSTEM_PYTHON=1 \
    UV_BREAK_SYSTEM_PACKAGES=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_CONSTRAINT=/etc/comfy/constraints.txt \
    PIP_CONSTRAINT=/etc/comfy/constraints.txt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
ARG PYTHON_VERSION=3.11
# Ubuntu package versions are not pinned: the CUDA base tag fixes the Ubuntu release and
# its archive only keeps the latest security build, so exact pins break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates git git-lfs ffmpeg libgl1 libglib2.0-0 libsm6 libxext6 libxrender1 \
      libgomp1 procps tini \
 && if [ "${PYTHON_VERSION}" = system ]; then \
      apt-get install -y --no-install-recommends python3 python3-venv \
      && python3 -c 'import os, site, sys; d = site.getsitepackages()[0]; os.makedirs(d, exist_ok=True); \
open(d + "/opt-python.pth", "w").write("/opt/python/system/lib/python%d.%d/site-packages\n" % sys.version_info[:2])'; \
    fi \
 && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /uvx /usr/local/bin/

# ---------------------------------------------------------------------------------------
# deps: Python, torch, the worker's pinned requirements and ComfyUI's, all into /opt/python.
# Nothing here depends on the version: every version's image shares this layer.
FROM base AS deps
# Compilers for custom-node requirements that build from source; never in a final stage.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
ARG TORCH_VERSION=2.8.0
ARG TORCHVISION_VERSION=0.23.0
ARG TORCHAUDIO_VERSION=2.8.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# An empty TORCHVISION_VERSION or TORCHAUDIO_VERSION leaves that package out; an empty
# TORCH_INDEX_URL installs from PyPI and the `wheels` context only.
RUN --mount=type=cache,id=comfy-uv,target=/root/.cache/uv,sharing=locked \
    --mount=type=bind,from=wheels,target=/wheels \
    prefix="" \
 && if [ "${PYTHON_VERSION}" = system ]; then \
      prefix=/opt/python/system \
      && mkdir -p /opt/python/system/bin \
      && ln -s "$(readlink -f /usr/bin/python3)" /opt/python/system/bin/python3 \
      && ln -s python3 /opt/python/system/bin/python \
      && ln -sfn system /opt/python/current; \
    else \
      uv python install "${PYTHON_VERSION}" \
      && ln -sfn "$(dirname "$(dirname "$(uv python find "${PYTHON_VERSION}")")")" /opt/python/current; \
    fi \
 && rm -rf /opt/python/.lock /opt/python/.temp /opt/python/.cache \
 && mkdir -p /etc/comfy \
 && for pin in "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" "torchaudio==${TORCHAUDIO_VERSION}"; do \
      if [ -n "${pin#*==}" ]; then echo "$pin"; fi; \
    done > /etc/comfy/constraints.txt \
 && UV_DEFAULT_INDEX="${TORCH_INDEX_URL:-https://pypi.org/simple}" \
      uv pip install ${prefix:+--prefix "$prefix"} --find-links /wheels -r /etc/comfy/constraints.txt
COPY requirements/runtime.lock requirements/comfyui.lock /tmp/
RUN --mount=type=cache,id=comfy-uv,target=/root/.cache/uv,sharing=locked \
    prefix="" \
 && if [ "${PYTHON_VERSION}" = system ]; then prefix=/opt/python/system; fi \
 && uv pip install ${prefix:+--prefix "$prefix"} -r /tmp/runtime.lock \
 && uv pip install ${prefix:+--prefix "$prefix"} -r /tmp/comfyui.lock -c /tmp/runtime.lock \
 && rm /tmp/runtime.lock /tmp/comfyui.lock \
 && { python3 -m compileall -q -j 0 --invalidation-mode checked-hash \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" \
      || echo "compileall: some stdlib files have syntax errors and stay uncompiled"; } \
 && find /opt/python /etc/comfy -xdev -perm -o+w ! -type l -exec chmod o-w {} +

# ---------------------------------------------------------------------------------------
# app: the worker's own code, compiled. .dockerignore keeps tests, docs and caches out.
FROM deps AS app
WORKDIR /app
COPY . /app/
RUN python3 -m compileall -q -j 0 --invalidation-mode checked-hash /app \
 && find /app -xdev -perm -o+w ! -type l -exec chmod o-w {} +

# ---------------------------------------------------------------------------------------
# realize-*: `scripts/version.py realize` against cache mounts, into the venv /opt/venv made with
# --system-site-packages on /opt/python: pip (which, unlike uv, counts the packages it sees there
# as installed) puts into it only what the version needs beyond the shared layer, and nothing
# realize does changes /opt/python, which the final stages copy from deps.
# Only the builder and the specs (and the OnDemand node) are copied in, so a change to the
# worker does not re-realize. realize also compiles ComfyUI, the nodes and the venv to .pyc
# (unchecked-hash: nothing in an image changes the sources; PYC_MODE). git objects, model blobs and pip/Hugging Face downloads stay in cache mounts;
# the realized files (checkouts, installed packages, model files) are copied out of them into
# the layer by the builder itself (MODELS_DIR is outside every mount), and the check after
# realize fails the build if anything in the layer is a link into a mount.
FROM deps AS realize-baked
WORKDIR /app
COPY builder/ /app/builder/
COPY scripts/version.py /app/scripts/version.py
COPY versions/ /app/versions/
# realize installs the NVMe cache's OnDemand node into custom_nodes/ from here.
COPY comfy_nodes/ /app/comfy_nodes/
ARG VERSION_ID
ENV COMFY_HOME=/opt/comfy \
    MODELS_DIR=/opt/models \
    COMFY_CACHE_ROOT=/opt/cache \
    COMFY_PYTHON=/opt/venv/bin/python3 \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/root/.cache/huggingface \
    PYC_MODE=unchecked-hash
RUN python3 -m venv --system-site-packages /opt/venv
RUN --mount=type=cache,id=comfy-pip,target=/root/.cache/pip,sharing=locked \
    --mount=type=cache,id=comfy-hf,target=/root/.cache/huggingface,sharing=locked \
    --mount=type=cache,id=comfy-git,target=/opt/cache/git,sharing=locked \
    --mount=type=cache,id=comfy-store,target=/opt/cache/store,sharing=locked \
    --mount=type=bind,from=sources,target=/sources \
    --mount=type=secret,id=hf_token,env=HF_TOKEN \
    --mount=type=secret,id=civitai_token,env=CIVITAI_TOKEN \
    python3 scripts/version.py realize "${VERSION_ID:?build with --build-arg VERSION_ID=<id>}" --target /opt/comfy \
      --installer pip
# /opt/models may not exist for a spec without models; the final stage copies it regardless.
RUN mkdir -p /opt/models \
 && dangling="$(find /opt/venv /opt/comfy /opt/models /opt/cache -xtype l)" \
 && if [ -n "$dangling" ]; then \
      printf 'realize left links into a cache mount; they would dangle in the image:\n%s\n' "$dangling" >&2; \
      exit 1; \
    fi \
 && find /opt/venv /opt/comfy /opt/models /opt/cache -xdev -perm -o+w ! -type l -exec chmod o-w {} +

FROM deps AS realize-hybrid
WORKDIR /app
COPY builder/ /app/builder/
COPY scripts/version.py /app/scripts/version.py
COPY versions/ /app/versions/
# realize installs the NVMe cache's OnDemand node into custom_nodes/ from here.
COPY comfy_nodes/ /app/comfy_nodes/
ARG VERSION_ID
# MODELS_DIR is where the models will be at run time (the volume): realize writes
# extra_model_paths.yaml pointing there and, with --skip-models, fetches nothing.
ENV COMFY_HOME=/opt/comfy \
    MODELS_DIR=/runpod-volume/cache/runpod-comfy/models \
    COMFY_CACHE_ROOT=/opt/cache \
    COMFY_PYTHON=/opt/venv/bin/python3 \
    PATH=/opt/venv/bin:$PATH \
    PYC_MODE=unchecked-hash
RUN python3 -m venv --system-site-packages /opt/venv
RUN --mount=type=cache,id=comfy-pip,target=/root/.cache/pip,sharing=locked \
    --mount=type=cache,id=comfy-git,target=/opt/cache/git,sharing=locked \
    --mount=type=bind,from=sources,target=/sources \
    python3 scripts/version.py realize "${VERSION_ID:?build with --build-arg VERSION_ID=<id>}" \
      --target /opt/comfy --skip-models --installer pip
RUN dangling="$(find /opt/venv /opt/comfy /opt/cache -xtype l)" \
 && if [ -n "$dangling" ]; then \
      printf 'realize left links into a cache mount; they would dangle in the image:\n%s\n' "$dangling" >&2; \
      exit 1; \
    fi \
 && find /opt/venv /opt/comfy /opt/cache -xdev -perm -o+w ! -type l -exec chmod o-w {} +

# ---------------------------------------------------------------------------------------
# Final stages: base + copied trees only (no compilers, no caches, no build context).
# The shared layers come first (same content, same layer in every version's image), then the
# version's own. `docker run --gpus all IMAGE` runs /app/test_input.json once and exits with its status.
FROM base AS volume
ARG VERSION_ID=""
COPY --link --from=deps /opt/python /opt/python
COPY --link --from=deps /etc/comfy /etc/comfy
COPY --link --from=app /app /app
WORKDIR /app
ENV COMFY_VERSION_ID=${VERSION_ID} \
    UV_PYTHON_DOWNLOADS=never
ENTRYPOINT ["/usr/bin/tini", "--", "python3", "-m", "rp_handler"]

FROM base AS hybrid
ARG VERSION_ID
COPY --link --from=deps /opt/python /opt/python
COPY --link --from=deps /etc/comfy /etc/comfy
COPY --link --from=app /app /app
COPY --link --from=realize-hybrid /opt/venv /opt/venv
COPY --link --from=realize-hybrid /opt/comfy /opt/comfy
COPY --link --from=realize-hybrid /opt/cache /opt/cache
WORKDIR /app
ENV COMFY_VERSION_ID=${VERSION_ID} \
    COMFY_HOME=/opt/comfy \
    COMFY_CACHE_ROOT=/opt/cache \
    COMFY_PYTHON=/opt/venv/bin/python3 \
    MODELS_DIR=/runpod-volume/cache/runpod-comfy/models \
    NVME_CACHE_DIR=/var/cache/comfy-nvme \
    UV_PYTHON_DOWNLOADS=never
ENTRYPOINT ["/usr/bin/tini", "--", "python3", "-m", "rp_handler"]

FROM base AS baked
ARG VERSION_ID
COPY --link --from=deps /opt/python /opt/python
COPY --link --from=deps /etc/comfy /etc/comfy
COPY --link --from=app /app /app
COPY --link --from=realize-baked /opt/venv /opt/venv
COPY --link --from=realize-baked /opt/comfy /opt/comfy
COPY --link --from=realize-baked /opt/cache /opt/cache
COPY --link --from=realize-baked /opt/models /opt/models
WORKDIR /app
ENV COMFY_VERSION_ID=${VERSION_ID} \
    COMFY_HOME=/opt/comfy \
    COMFY_CACHE_ROOT=/opt/cache \
    COMFY_PYTHON=/opt/venv/bin/python3 \
    MODELS_DIR=/opt/models \
    COMFY_DEPLOY_MODE=baked \
    UV_PYTHON_DOWNLOADS=never
ENTRYPOINT ["/usr/bin/tini", "--", "python3", "-m", "rp_handler"]
