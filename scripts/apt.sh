# Sourced by the scripts that install what `make` needs (services.sh, bootstrap-podman.sh),
# which define `say`. apt_install PACKAGE…: install with apt-get as root, after one
# `apt-get update` a run; returns 1 where it cannot (not root, no apt-get) or apt-get fails.
APT_UPDATED=0

apt_install() {
  [ "$(id -u)" = 0 ] || return 1
  command -v apt-get >/dev/null || return 1
  if [ "$APT_UPDATED" = 0 ]; then
    say "apt-get update"
    apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
