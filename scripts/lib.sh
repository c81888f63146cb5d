# Shared by scripts/install-and-run and scripts/test: idempotent installation
# of Debian packages (apt-get runs only when something is missing) without
# letting package scripts start services (docker-registry would otherwise
# start a registry on port 5000).

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "$0: run as root (it installs packages and serves /run/berth/berth.sock)" >&2
    exit 1
  fi
}

apt_install() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
  [ $rc -eq 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?; }
  [ $made_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  return $rc
}

# What berthd needs at run time.
RUNTIME_PACKAGES=(runc crun containernetworking-plugins iptables kmod util-linux iproute2 procps criu)
# What the tests need on top.
TEST_PACKAGES=(docker-registry busybox-static)
