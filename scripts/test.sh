#!/usr/bin/env bash
# Run hoist's whole test suite. The integration tests start their own
# registries (Debian's docker-registry) on free loopback ports and use
# Debian's skopeo, umoci, buildah, attr, erofs-utils, e2fsprogs, cpio, QEMU,
# busybox (as reference tools and for the boot tests) and docker.io (the
# push tests start their own dockerd); as root this
# installs them when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v umoci >/dev/null || need+=(umoci)
command -v buildah >/dev/null || need+=(buildah)
command -v setfattr >/dev/null || need+=(attr)
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
command -v debugfs >/dev/null || need+=(e2fsprogs)
command -v cpio >/dev/null || need+=(cpio)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
# ISA-L's inflate (the `isal` feature) links Debian's libisal.
[ -e /usr/include/isa-l.h ] || [ -e /usr/include/isa-l/igzip_lib.h ] || need+=(libisal-dev)
# The push tests start a Docker engine of their own (docker login, push).
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
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
# The disk boot test also needs the modules that put a virtio disk, ext4,
# erofs and overlayfs in reach of a small initramfs (and their dependencies).
MODS='./lib/modules/*/kernel/drivers/virtio/* ./lib/modules/*/kernel/drivers/block/virtio_blk.ko
  ./lib/modules/*/kernel/fs/ext4/* ./lib/modules/*/kernel/fs/jbd2/* ./lib/modules/*/kernel/fs/mbcache.ko
  ./lib/modules/*/kernel/lib/crc16.ko ./lib/modules/*/kernel/lib/libcrc32c.ko
  ./lib/modules/*/kernel/crypto/crc32c_generic.ko ./lib/modules/*/kernel/fs/erofs/*
  ./lib/modules/*/kernel/fs/overlayfs/*'
if ! ls target/test-kernel/boot/vmlinuz-* >/dev/null 2>&1 || ! ls target/test-kernel/lib/modules/*/kernel/fs/erofs/erofs.ko >/dev/null 2>&1; then
  dl=$(mktemp -d)
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  if [ -n "$pkg" ] && (cd "$dl" && apt-get download -qq "$pkg" 2>/dev/null); then
    mkdir -p target/test-kernel
    deb=$(ls "$dl"/*.deb)
    set -f # the patterns are tar's, not the shell's
    # shellcheck disable=SC2086
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C target/test-kernel --wildcards './boot/vmlinuz-*' $MODS
    set +f
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

# Both inflate backends run the whole suite and must give the same trees:
# zlib-rs (the default build), then ISA-L.
cargo test --workspace "$@"
cargo test --workspace --features hoist-cli/isal "$@"
