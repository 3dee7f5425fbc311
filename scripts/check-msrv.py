#!/usr/bin/env python3
"""Check the workspace's rust-version against what it really needs.

The code's own needs are held by clippy's `incompatible_msrv` lint (denied
in [workspace.lints]; every crate inherits rust-version). This script holds
the dependencies to it: no package in the lock file's resolved graph may ask
for a newer Rust than the workspace declares. It also fails when the
declared version is older than the toolchain can check against.

Usage: scripts/check-msrv.py   (exit 1 with the offenders listed)"""
import json
import subprocess
import sys
import tomllib


def ver(s):
    return tuple(int(x) for x in s.split(".")) + (0,) * (3 - len(s.split(".")))


with open("Cargo.toml", "rb") as f:
    declared = tomllib.load(f)["workspace"]["package"]["rust-version"]
meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
resolved = {n["id"] for n in meta["resolve"]["nodes"]}
members = set(meta["workspace_members"])
bad = []
need = (0, 0, 0)
for p in meta["packages"]:
    rv = p.get("rust_version")
    if p["id"] in members:
        if rv != declared:
            bad.append(f"{p['name']}: rust-version {rv!r}, not the workspace's {declared}")
        continue
    if p["id"] in resolved and rv:
        need = max(need, ver(rv))
        if ver(rv) > ver(declared):
            bad.append(f"{p['name']} {p['version']} needs Rust {rv}")
print(f"rust-version {declared}; dependencies need at most {'.'.join(map(str, need))}")
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
