#!/usr/bin/env bash
# Get a Docker engine and the Dockerfile's base images on a machine that has neither, to
# smoke-test the image without a GPU or a registry (docs/runpod.md, "Smoke-testing the image without a GPU or a registry").
#
# Usage: scripts/local_docker.sh up     engine + buildx + base images; prints the build args to use
#        scripts/local_docker.sh down   stop the engine this script started (images stay on disk)
# `up` prints, on its last line, the extra `docker buildx build` arguments this machine needs.
#
# `up` reuses what works: a running engine with buildx is kept as it is, and a base image that
# `docker pull` gets is used as is. Otherwise, as root on Debian/Ubuntu with apt:
#   engine   Debian's newest docker.io, docker-buildx and containerd (unstable) and runc from the
#            machine's own release, unpacked under $LOCAL_DOCKER_DIR (nothing installed), then
#            dockerd --iptables=false --ip6tables=false --bridge=none, overlay2 (vfs if that fails)
#   CUDA_IMAGE  a stand-in: Debian bookworm from debootstrap, imported under the real name, with
#            this machine's CA bundle added (package registries may sit behind a TLS proxy)
#   UV_IMAGE    a stand-in holding /uv and /uvx from PyPI's uv wheel of the same version
# The stand-in base has no CUDA: build the CPU variant on it (docs/runpod.md, "CPU image").
# Environment: LOCAL_DOCKER_DIR (default /var/tmp/runpod-comfy-docker), CUDA_IMAGE, UV_IMAGE
# (default: the Dockerfile's), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

cd "$(dirname "$0")/.."
dir="${LOCAL_DOCKER_DIR:-/var/tmp/runpod-comfy-docker}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
default_arg() { sed -n "s/^ARG $1=//p" Dockerfile | head -n 1; }
cuda_image="${CUDA_IMAGE:-$(default_arg CUDA_IMAGE)}"
uv_image="${UV_IMAGE:-$(default_arg UV_IMAGE)}"
label=org.runpod-comfy.standin  # marks the images this script made
say() { echo "local_docker.sh: $*" >&2; }
die() { say "$*"; exit 1; }

engine_ok() { docker info >/dev/null 2>&1; }
plugins=/usr/local/lib/docker/cli-plugins  # searched by every docker CLI, whatever HOME is

ensure_buildx() {
  docker buildx version >/dev/null 2>&1 && return 0
  [ -x "$dir/root/usr/libexec/docker/cli-plugins/docker-buildx" ] || get_engine
  mkdir -p "$plugins"
  ln -sfn "$dir/root/usr/libexec/docker/cli-plugins/docker-buildx" "$plugins/docker-buildx"
  docker buildx version >/dev/null 2>&1 || die "docker buildx does not run; see $plugins/docker-buildx"
}

apt_unstable() {  # apt-get with its own lists for Debian unstable; the machine's apt state is untouched
  local a="$dir/apt"
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
  touch "$a/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror unstable main" > "$a/sources.list"
  apt-get -q -o Dir::Etc::sourcelist="$a/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$a/lists" -o Dir::Cache="$a/cache" -o Dir::State::status="$a/status" "$@"
}

get_engine() {
  command -v apt-get >/dev/null || die "no Docker engine and no apt-get: install Docker with buildx yourself"
  [ "$(id -u)" = 0 ] || die "starting dockerd needs root (or install Docker with buildx yourself)"
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || apt-get install -y -q debian-archive-keyring
  mkdir -p "$dir/debs" && rm -f "$dir"/debs/*.deb
  local pkgs=(docker.io docker-buildx containerd)
  command -v docker >/dev/null || pkgs+=(docker-cli)
  apt_unstable update >/dev/null
  (cd "$dir/debs" && apt_unstable download "${pkgs[@]}" >/dev/null && apt-get -q download runc >/dev/null) \
    || die "could not download ${pkgs[*]} runc with apt"
  rm -rf "$dir/root" && mkdir -p "$dir/root"
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
  # runc from the machine's release replaces unstable's (built against a newer libc)
  dpkg-deb -x "$(ls "$dir"/debs/runc_*.deb)" "$dir/root"
}

start_engine() {
  local bin="$dir/root/usr/sbin:$dir/root/usr/bin" driver
  command -v docker >/dev/null || ln -sfn "$dir/root/usr/bin/docker" /usr/local/bin/docker
  for driver in overlay2 vfs; do
    PATH="$bin:$PATH" setsid dockerd --iptables=false --ip6tables=false --bridge=none \
      --storage-driver="$driver" >"$dir/dockerd.log" 2>&1 < /dev/null &
    echo $! > "$dir/dockerd.pid"
    for _ in $(seq 60); do
      engine_ok && { say "dockerd running (storage driver $driver, log $dir/dockerd.log)"; return 0; }
      kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null || break
      sleep 1
    done
    stop_engine
    say "dockerd did not start with $driver: $(tail -n 1 "$dir/dockerd.log")"
  done
  die "dockerd did not start; see $dir/dockerd.log"
}

stop_engine() {
  [ -f "$dir/dockerd.pid" ] || return 0
  local pid; pid="$(cat "$dir/dockerd.pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  rm -f "$dir/dockerd.pid"
}

standin_cuda() {
  local rootfs="$dir/rootfs"
  if [ ! -f "$rootfs/.complete" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
    rm -rf "$rootfs"
    nice -n 15 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$dir/debootstrap.log" 2>&1 \
      || die "debootstrap failed; see $dir/debootstrap.log"
    touch "$rootfs/.complete"
  fi
  # The build installs ca-certificates, which rebuilds the bundle from these files; uv and pip
  # are told to read that bundle (they carry their own roots otherwise).
  local bundle=/etc/ssl/certs/ca-certificates.crt
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/usr/local/share/ca-certificates/host-bundle.crt"
  echo "deb $mirror bookworm main" > "$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --exclude=./.complete -c . \
    | docker import -c 'CMD ["/bin/bash"]' -c "LABEL $label=true" \
        -c "ENV SSL_CERT_FILE=$bundle PIP_CERT=$bundle" - "$cuda_image" >/dev/null
}

standin_uv() {
  local version="${uv_image##*:}" tmp
  tmp="$(mktemp -d)"
  python3 -m pip download -q --no-deps --only-binary :all: -d "$tmp" "uv==$version" \
    || die "could not download uv==$version from PyPI"
  (cd "$tmp" && python3 -m zipfile -e uv-*.whl x && mkdir img && cp x/uv-*.data/scripts/uv x/uv-*.data/scripts/uvx img/ \
     && chmod 755 img/uv img/uvx && tar -C img -c . | docker import -c "LABEL $label=true" - "$uv_image" >/dev/null)
  rm -rf "$tmp"
}

ensure_image() {  # name, stand-in function
  docker image inspect "$1" >/dev/null 2>&1 && { say "$1: present"; return 0; }
  if timeout 120 docker pull -q "$1" >/dev/null 2>&1; then say "$1: pulled"; return 0; fi
  say "$1: no registry; making a stand-in"
  "$2"
}
is_standin() { [ "$(docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$1" 2>/dev/null)" = true ]; }

case "${1:-}" in
  up)
    mkdir -p "$dir"
    if engine_ok; then say "using the running Docker engine"
    else
      [ -x "$dir/root/usr/sbin/dockerd" ] || get_engine
      start_engine
    fi
    ensure_buildx
    ensure_image "$cuda_image" standin_cuda
    ensure_image "$uv_image" standin_uv
    args=()  # what `docker buildx build` needs here, printed on one line
    # This script's dockerd has no bridge network: a build step reaches the registries through the host's.
    [ -f "$dir/dockerd.pid" ] && args+=(--network host)
    for v in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
      [ -n "${!v:-}" ] && args+=(--build-arg "$v=${!v}")
    done
    if is_standin "$cuda_image"; then
      say "stand-in base (Debian, its own Python, no CUDA): build the CPU variant (docs/runpod.md, \"CPU image\")"
      args+=(--build-arg PYTHON_VERSION=system)
    fi
    echo "${args[*]-}"

    ;;
  down) stop_engine; say "engine stopped" ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
