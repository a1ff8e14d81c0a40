# Sourced by scripts/test.sh. When ../shared/comfyui/ComfyUI-*.tar.gz exists (CI's copy of shared/ beside
# the clone) and COMFYUI_DIR is not set at all, build that ComfyUI once into build/comfyui/ (its source
# tree and a venv with CPU torch) and export COMFYUI_DIR, COMFYUI_PYTHON and REAL_E2E=1, so the
# real-ComfyUI tests (marker real_comfy) run against it instead of skipping.
# A stamp (the tarball + the install steps below) makes the next run reuse the build. Quiet unless it fails: then one line
# and the log's path. `COMFYUI_DIR= scripts/test.sh` skips the build (and the real-ComfyUI tests).
REAL_COMFY_ROOT=build/comfyui
REAL_COMFY_LOG=build/comfyui.log
REAL_COMFY_TORCH="torch==2.13.0"

# The wheel folders pip is configured with here (pip.conf find-links, PIP_FIND_LINKS): the CPU torch
# wheel lies in one. uv does not read pip's configuration, so they are handed over explicitly.
real_comfy_find_links() {
  { python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'\$/\1/p"
    echo "${PIP_FIND_LINKS:-}"; } | tr ' ,' '\n\n' | sed '/^$/d' | sort -u
}

# PyPI's torchvision is a CUDA build: beside a CPU torch its C++ ops do not load and its
# register_fake("torchvision::nms") fails at import. Make those registrations conditional on the ops.
real_comfy_torchvision_guard() {
  local meta
  meta="$(echo "$REAL_COMFY_ROOT"/venv/lib/python3*/site-packages/torchvision/_meta_registrations.py)"
  python3 - "$meta" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
new, n = re.subn(r"^@torch\.library\.register_fake\((.*)\)$",
                 r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))",
                 text, flags=re.M)
print(f"torchvision guard: {n} registration(s) made conditional in {path}")
with open(path + ".tmp", "w") as fh:
    fh.write(new)
import os; os.replace(path + ".tmp", path)
EOF
}

real_comfy_install() {
  local venv="$REAL_COMFY_ROOT/venv" links=() d
  for d in $(real_comfy_find_links); do links+=(--find-links "$d"); done
  python3 -m venv "$venv"
  if [ -x .venv/bin/uv ]; then
    .venv/bin/uv pip install --python "$venv/bin/python" "${links[@]}" \
      "$REAL_COMFY_TORCH" -r "$REAL_COMFY_ROOT/ComfyUI/requirements.txt" requests
  else
    "$venv/bin/python" -m pip install "$REAL_COMFY_TORCH" -r "$REAL_COMFY_ROOT/ComfyUI/requirements.txt" requests
  fi
  real_comfy_torchvision_guard
  "$venv/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
}

real_comfy_build() {
  local tarball want
  tarball="$(ls ../shared/comfyui/ComfyUI-*.tar.gz 2>/dev/null | head -n 1)"
  [ -n "$tarball" ] && [ -z "${COMFYUI_DIR+set}" ] || return 0
  want="$({ cat "$tarball"; declare -f real_comfy_find_links real_comfy_torchvision_guard real_comfy_install; } \
          | sha256sum | cut -d' ' -f1)"
  mkdir -p build
  exec 8>build/comfyui.flock
  flock 8  # two test runs in one tree build it once; correctness rests on the stamp written last
  if [ ! -x "$REAL_COMFY_ROOT/venv/bin/python" ] || [ "$(cat "$REAL_COMFY_ROOT/.stamp" 2>/dev/null)" != "$want" ]; then
    echo "test.sh: building the real ComfyUI from $tarball into $REAL_COMFY_ROOT (once; log: $REAL_COMFY_LOG)" >&2
    set +e  # not `if ! (...)`: bash would ignore the subshell's own set -e in a condition
    (set -euxo pipefail
     rm -rf "$REAL_COMFY_ROOT"
     mkdir -p "$REAL_COMFY_ROOT"
     tar -xzf "$tarball" -C "$REAL_COMFY_ROOT"
     real_comfy_install
     echo "$want" > "$REAL_COMFY_ROOT/.stamp") > "$REAL_COMFY_LOG" 2>&1
    local rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
      echo "test.sh: building the real ComfyUI failed: see $REAL_COMFY_LOG (or run with COMFYUI_DIR= to skip the real-ComfyUI tests)" >&2
      exit 1
    fi
  fi
  exec 8>&-
  export COMFYUI_DIR="$PWD/$REAL_COMFY_ROOT/ComfyUI" COMFYUI_PYTHON="$PWD/$REAL_COMFY_ROOT/venv/bin/python"
  export REAL_E2E="${REAL_E2E:-1}"
  # The quick-start e2e installs the same packages with uv: it needs the wheel folders (from PIP_FIND_LINKS
  # or UV_FIND_LINKS, comma-separated for uv) and gets the warm cache.
  if [ -z "${PIP_FIND_LINKS:-}${UV_FIND_LINKS:-}" ]; then
    export UV_FIND_LINKS="$(real_comfy_find_links | paste -sd ',')"
  fi
  export UV_CACHE_DIR="${UV_CACHE_DIR:-$(.venv/bin/uv cache dir 2>/dev/null || true)}"
  [ -n "$UV_CACHE_DIR" ] || unset UV_CACHE_DIR
  # The tree sits inside this project's (ignored) build/: git must not take it for part of this repo.
  export GIT_CEILING_DIRECTORIES="$PWD/$REAL_COMFY_ROOT${GIT_CEILING_DIRECTORIES:+:$GIT_CEILING_DIRECTORIES}"
}

real_comfy_build
