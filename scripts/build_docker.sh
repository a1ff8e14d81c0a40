#!/usr/bin/env bash
# Build the worker image with docker buildx and print its size.
#
# Usage: scripts/build_docker.sh --version <id> --tag <tag> [--mode baked|volume|hybrid]
#                                [--platform P] [--push] [--dry-run] [-- extra buildx args]
#   --mode     baked (default): ComfyUI, nodes and models in the image
#              hybrid: ComfyUI and nodes in the image, models on the network volume
#              volume: only the worker; --version is optional (the default COMFY_VERSION_ID)
#   --push     push to the registry in --tag instead of loading into the local engine
#   --dry-run  print the docker command and exit without running anything
# Secrets: HF_TOKEN and CIVITAI_TOKEN, when set in the environment, are passed as BuildKit
# secrets (--secret id=hf_token,env=HF_TOKEN); their values never reach a layer, a build
# argument, this script's output or `docker history`.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; echo; }
die_usage() { echo "build_docker.sh: $*" >&2; echo "run scripts/build_docker.sh --help for usage" >&2; exit 2; }

need_value() { [ $# -ge 2 ] && [ "${2#--}" = "$2" ] || die_usage "$1 needs a value"; }

cd "$(dirname "$0")/.."
version="" tag="" mode="baked" platform="" push=0 dry_run=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --version) need_value "$@"; version="$2"; shift 2 ;;
    --version=*) version="${1#*=}"; shift ;;
    --tag) need_value "$@"; tag="$2"; shift 2 ;;
    --tag=*) tag="${1#*=}"; shift ;;
    --mode) need_value "$@"; mode="$2"; shift 2 ;;
    --mode=*) mode="${1#*=}"; shift ;;
    --platform) need_value "$@"; platform="$2"; shift 2 ;;
    --platform=*) platform="${1#*=}"; shift ;;
    --push) push=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done

case "$mode" in
  baked|hybrid|volume) ;;
  *) die_usage "--mode '$mode' is not one of baked, hybrid, volume" ;;
esac
if [ -z "$version" ] && [ "$mode" != volume ]; then
  die_usage "--version <id> is required for --mode $mode (versions/<id>.json is realized into the image)"
fi
if [ -n "$version" ]; then
  case "$version" in
    */*|.*|*[!A-Za-z0-9._-]*) die_usage "--version '$version' is not a version id (letters, digits, . _ -)" ;;
  esac
  if [ "$mode" != volume ] && [ ! -f "versions/$version.json" ]; then
    echo "build_docker.sh: versions/$version.json not found; create it with scripts/version.py create $version" >&2
    exit 1
  fi
fi
case "$platform" in
  *,*) [ "$push" = 1 ] || die_usage "--platform '$platform' names several platforms: add --push (a local engine loads one platform)" ;;
esac
[ -n "$tag" ] || tag="runpod-comfy:${version:-worker}-${mode}"

cmd=(docker buildx build --file Dockerfile --target "$mode" --tag "$tag")
[ -n "$version" ] && cmd+=(--build-arg "VERSION_ID=$version")
[ -n "$platform" ] && cmd+=(--platform "$platform")
# Only the names of the variables travel on the command line; buildx reads the values.
[ -n "${HF_TOKEN:-}" ] && cmd+=(--secret "id=hf_token,env=HF_TOKEN")
[ -n "${CIVITAI_TOKEN:-}" ] && cmd+=(--secret "id=civitai_token,env=CIVITAI_TOKEN")
if [ "$push" = 1 ]; then cmd+=(--push); else cmd+=(--load); fi
# ${a[@]+"${a[@]}"}: an empty array under set -u is an error in bash before 4.4 (macOS has 3.2)
cmd+=(${extra[@]+"${extra[@]}"} .)

if [ "$dry_run" = 1 ]; then
  # One shell-ready line; arguments with characters a shell would read are single-quoted.
  out=()
  for a in "${cmd[@]}"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
  exit 0
fi

command -v docker >/dev/null || { echo "build_docker.sh: docker not found on PATH; install Docker with buildx" >&2; exit 1; }
docker buildx version >/dev/null 2>&1 || {
  echo "build_docker.sh: docker buildx is missing; install the buildx plugin (package docker-buildx-plugin or docker-buildx)" >&2
  exit 1
}
# The Dockerfile needs BuildKit 0.16+ (Dockerfile frontend 1.10: secret mounts with env=). It names no
# `# syntax=` image, so an offline builder works; an older one gets this message instead of a parse error.
at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -t. -k1,1n -k2,2n | head -n 1)" = "$2" ]; }
case " ${extra[*]-} " in
  *BUILDKIT_SYNTAX=*) ;;  # the user picked a frontend image: its version is what counts
  *)
    bk="$(docker buildx inspect 2>/dev/null | sed -n 's/^BuildKit version: *v\{0,1\}\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)"
    if [ -n "$bk" ] && [ "$bk" != 0.0 ]; then
      need="0.16" have="BuildKit $bk"
    else  # the docker driver of some distro builds reports no version: the engine's tells it
      bk="$(docker version --format '{{.Server.Version}}' 2>/dev/null | sed -n 's/^\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')"
      need="27.3" have="Docker engine $bk"
    fi
    if [ -n "$bk" ] && ! at_least "$bk" "$need"; then
      echo "build_docker.sh: $have is too old: the Dockerfile needs BuildKit 0.16+ (Docker 27.3+); upgrade, or add -- --build-arg BUILDKIT_SYNTAX=docker/dockerfile:1.10 (pulls that frontend)" >&2
      exit 1
    fi ;;
esac
echo "building $tag (mode $mode${version:+, version $version})" >&2
"${cmd[@]}"

human() { python3 -c 'import sys; n=float(sys.argv[1]); u=["B","KiB","MiB","GiB","TiB"]; i=0
while n >= 1024 and i < 4: n /= 1024; i += 1
print(f"{n:.2f} {u[i]}")' "$1"; }
if [ "$push" = 1 ]; then
  # Compressed size as pushed: the sum of the layers of the manifest for this machine's platform.
  bytes="$(docker buildx imagetools inspect --raw "$tag" | python3 -c '
import json, subprocess, sys
ref = sys.argv[1]
m = json.load(sys.stdin)
if "manifests" in m:  # an index: take the first real platform (attestations say "unknown")
    first = next(d for d in m["manifests"] if d.get("platform", {}).get("os") != "unknown")
    path, _, last = ref.rpartition("/")
    repo = (path + "/" if path else "") + last.split(":")[0].split("@")[0]
    m = json.loads(subprocess.check_output(
        ["docker", "buildx", "imagetools", "inspect", "--raw", repo + "@" + first["digest"]]))
print(sum(layer["size"] for layer in m["layers"]))' "$tag")"
  echo "image $tag pushed: $(human "$bytes") compressed"
else
  bytes="$(docker image inspect --format '{{.Size}}' "$tag")"
  echo "image $tag: $(human "$bytes") uncompressed"
fi
