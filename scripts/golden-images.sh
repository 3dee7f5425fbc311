#!/usr/bin/env bash
# Prints the sha256 of every disk format hoist writes, for a few real
# images, so that a change meant to keep the bytes (a reshape) can be
# checked: run before and after, diff the output.
#   scripts/golden-images.sh [HOIST] [REGISTRY]  (default: target/release/hoist, 127.0.0.1:5000)
set -euo pipefail
hoist=${1:-target/release/hoist}
reg=${2:-127.0.0.1:5000}
work=$(mktemp -d /var/tmp/hoist-golden.XXXXXX)
trap 'rm -rf "$work"' EXIT
export HOIST_CACHE_DIR=${HOIST_CACHE_DIR:-/var/tmp/hoist-golden-cache}
refs=(oci:examples/hello:latest)
if curl -fsS "http://$reg/v2/" >/dev/null 2>&1; then
    refs+=("$reg/rig/debian:layered" "$reg/rig/debian:zstd" "$reg/rig/big:latest")
fi
for ref in "${refs[@]}"; do
    for fmt in ext4 erofs erofs-lz4 cpio; do
        args=(--format "${fmt%-lz4}")
        [[ $fmt == erofs-lz4 ]] && args+=(--compress lz4)
        "$hoist" export -q --insecure-registry "$reg" "${args[@]}" "$ref" -o "$work/out" >/dev/null
        printf '%s  %s %s\n' "$(sha256sum <"$work/out" | cut -c1-64)" "$ref" "$fmt"
        rm -f "$work/out"
    done
done
