#!/usr/bin/env bash
# Make podman and debootstrap usable for `make images-local` and the built-image tests: as
# root (debootstrap, podman's root storage and running an image's files under chroot need
# it), with both on PATH or installed from apt (Debian's packages; debian-archive-keyring
# lets debootstrap check a Debian mirror from Ubuntu too). Nothing to do: silent. When they
# cannot be had: one line on stderr says why and the status is 1, and `make test` goes on
# with the built-image tests skipped for that reason.
set -euo pipefail
say() { printf 'bootstrap-podman: %s\n' "$*" >&2; }
# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"

needed=()
command -v podman >/dev/null || needed+=(podman)
command -v debootstrap >/dev/null || needed+=(debootstrap)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || needed+=(debian-archive-keyring)
if [ "$(id -u)" != 0 ]; then
  say "not root: images-local builds a Debian base with debootstrap and runs images under chroot, both root's"
  exit 1
fi
[ "${#needed[@]}" = 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  say "no apt-get to install ${needed[*]}: install them with this system's packages"
  exit 1
fi
apt_install "${needed[@]}" || { say "apt-get install ${needed[*]} failed"; exit 1; }
