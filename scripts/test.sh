#!/usr/bin/env bash
# Run hoist's whole test suite. The integration tests start their own
# registries (Debian's docker-registry) on free loopback ports and use
# Debian's skopeo, umoci and attr (setfattr); as root this installs them
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v umoci >/dev/null || need+=(umoci)
command -v setfattr >/dev/null || need+=(attr)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # No init system here: stop docker-registry's postinst from starting a
  # service (policy-rc.d answering 101), and remove only a guard we added.
  added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; added=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" ca-certificates >/dev/null
  [ "$added" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

cargo test --workspace "$@"
