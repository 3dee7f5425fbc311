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
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
command -v debugfs >/dev/null || need+=(e2fsprogs)
command -v cpio >/dev/null || need+=(cpio)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
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

# The boot smoke test needs a kernel: take vmlinuz out of Debian's
# linux-image package (no install, no initramfs) into target/test-kernel.
if ! ls target/test-kernel/boot/vmlinuz-* >/dev/null 2>&1; then
  dl=$(mktemp -d)
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  if [ -n "$pkg" ] && (cd "$dl" && apt-get download -qq "$pkg" 2>/dev/null); then
    mkdir -p target/test-kernel
    dpkg-deb --fsys-tarfile "$dl"/*.deb | tar -x -C target/test-kernel --wildcards './boot/vmlinuz-*'
  else
    echo "scripts/test.sh: could not fetch a kernel; the boot smoke test will say SKIPPED" >&2
  fi
  rm -rf "$dl"
fi

if ls target/test-kernel/boot/vmlinuz-* >/dev/null 2>&1 && command -v qemu-system-x86_64 >/dev/null; then
  echo "scripts/test.sh: boot smoke test will run with $(ls target/test-kernel/boot/vmlinuz-*)"
else
  echo "scripts/test.sh: boot smoke test lacks a kernel or QEMU: it will say SKIPPED (and fail under CI=true)" >&2
fi

cargo test --workspace "$@"
