#!/usr/bin/env bash
# What `make images-local` adds to `make images` to build the same Dockerfile here, with no
# Docker engine and no registry (podman as root; scripts/bootstrap-podman.sh installs it):
#
#   local-images.sh flags UV   make the local bases when missing, then print podman build's
#                              flags: chroot isolation (the default OCI runtime fails on
#                              this kind of machine's cgroups), the host's network, nothing
#                              pulled, and the bases as PYTHON_IMAGE and UV_IMAGE
#   local-images.sh forget REGISTRY TAG
#                              remove the images that REGISTRY/sluiceway-*:TAG named before
#                              a rebuild moved the tag (each holds a ~100 MB virtualenv)
#
# The Python base is Debian bookworm with its python3.11 (python:3.11-slim-bookworm is
# bookworm with a CPython 3.11 of its own), made with debootstrap and holding the host's CA
# bundle, so that uv (UV_SYSTEM_CERTS) reaches PyPI through a TLS-inspecting proxy the host
# trusts. The uv base is a scratch image holding the uv binary the Makefile uses, at /uv as
# in ghcr.io/astral-sh/uv. Each is named by a digest of what it holds: a base is made once
# (debootstrap takes minutes) and again only when its recipe, the CA bundle or uv changes.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$PWD/.tools/images  # debootstrap's package cache and its root while it builds one
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
say() { printf 'local-images: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# The Debian mirror apt uses here for bookworm (DEBIAN_MIRROR overrides), else Debian's own.
mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local found
  found=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' \
    2>/dev/null | awk '$2 == "bookworm" { print $1; exit }') || true
  echo "${found:-http://deb.debian.org/debian}"
}

# A root debootstrap worked in: whatever a killed debootstrap left mounted in it (/proc,
# /sys) unmounted, and the rest deleted without crossing into another file system.
discard_root() { # root
  local mount
  for mount in $(findmnt -rn -o TARGET | grep -F "$1/" | sort -r); do umount -l "$mount" || true; done
  rm -rf --one-file-system "$1"
}

# Debian's minimal base with python3.11 and the host's CA bundle, without what a slim image
# leaves out (docs, man pages, locales, apt's package lists and downloads), as root's.
make_python_base() { # name
  local root=$WORK/root.$$ stale from
  for stale in "$WORK"/root.*; do
    [ -d "$stale" ] && ! kill -0 "${stale##*.}" 2>/dev/null && discard_root "$stale"
  done
  mkdir -p "$WORK/debs"
  trap "discard_root '$root'" EXIT  # $root is gone (local) by the time the trap runs
  from=$(mirror)
  say "debootstrap bookworm with python3.11 from $from (a few minutes; log: $WORK/debootstrap.log)"
  debootstrap --variant=minbase --include=python3.11,ca-certificates --cache-dir="$WORK/debs" \
    bookworm "$root" "$from" >"$WORK/debootstrap.log" 2>&1 ||
    die "debootstrap failed: $(tail -n 3 "$WORK/debootstrap.log" | tr '\n' ' ')"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
    "$root"/var/lib/apt/lists/* "$root"/usr/share/{doc,man,info,locale}/* "$root"/etc/resolv.conf
  cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
  tar --numeric-owner -C "$root" -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' - "$1" >/dev/null
}

python_base() {
  local key name
  key=$({ declare -f make_python_base; cat "$CA_BUNDLE"; } | sha256sum | cut -c1-12)
  name=localhost/sluiceway-python:3.11-bookworm-$key
  podman image exists "$name" || make_python_base "$name"
  echo "$name"
}

uv_base() { # uv
  local uv version key name dir
  uv=$(readlink -f "$(command -v "$1")")
  version=$("$uv" --version | cut -d' ' -f2)
  key=$(sha256sum <"$uv" | cut -c1-12)
  name=localhost/sluiceway-uv:$version-$key
  if ! podman image exists "$name"; then
    grep -q "uv:$version\$" Dockerfile ||
      say "note: uv $version here; the Dockerfile's UV_IMAGE is $(sed -n 's/^ARG UV_IMAGE=//p' Dockerfile)"
    dir=$(mktemp -d)
    cp "$uv" "$dir/uv"
    tar --numeric-owner -C "$dir" -c uv | podman import --quiet - "$name" >/dev/null
    rm -rf "$dir"
  fi
  echo "$name"
}

flags() { # uv
  local python uv
  python=$(python_base)
  uv=$(uv_base "$1")
  echo "--isolation chroot --network host --pull=never --build-arg UV_SYSTEM_CERTS=true" \
    "--build-arg PYTHON_IMAGE=$python --build-arg UV_IMAGE=$uv"
}

forget() { # registry tag
  local id names name
  podman images --filter dangling=true --format '{{.ID}} {{.History}}' | while read -r id names; do
    for name in ${names//,/ }; do
      if [[ $name == "$1/sluiceway-"*":$2" ]]; then
        podman rmi "$id" >/dev/null 2>&1 || true  # still in use: kept
        break
      fi
    done
  done
}

case "${1:-}" in
  flags) flags "${2:?local-images.sh flags UV}" ;;
  forget) forget "${2:?local-images.sh forget REGISTRY TAG}" "${3:?local-images.sh forget REGISTRY TAG}" ;;
  *) die "usage: local-images.sh flags UV | forget REGISTRY TAG" ;;
esac
