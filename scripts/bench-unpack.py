#!/usr/bin/env python3
"""Unpack: hoist vs `umoci unpack` vs `tar -xzf`, warm and cold, alternating.

    scripts/bench-unpack.py [--runs N] [--ref HOST/REPO:TAG] [--hoist PATH]

warm: the layer blobs are already in an OCI layout (hoist's cache; umoci
      reads the same layout); hoist unpack vs umoci unpack --rootless vs
      GNU tar -xzf of the same blobs in order.
cold: an empty cache; `hoist unpack` from the registry vs
      `skopeo copy` + `umoci unpack --rootless`.
Every run writes into a fresh directory; outputs are deleted and synced
outside the timed region. Prints medians of wall time and peak RSS (wait4's
ru_maxrss of the tool's largest process) and the ratios. The image comes
from ../shared/rig (images.sh): rig/big:latest at 127.0.0.1:5000.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ENV, ablations, floor_cmd, timed  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--ref", default="127.0.0.1:5000/rig/big:latest")
ap.add_argument("--workdir", default="/var/tmp", help="where caches and outputs go")
ap.add_argument("--hoist", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "hoist"))
ap.add_argument("--no-cold", action="store_true")
ap.add_argument("--hoist-zlib", default=None,
                help="a hoist built without the isal feature, to measure what ISA-L buys")
ap.add_argument("--no-ablate", action="store_true", help="skip the single-stage and no-record runs")
ap.add_argument("--settle", type=float, default=20.0,
                help="seconds to wait after deleting outputs (untimed): on a filesystem mounted with "
                     "online discard, allocation right after a mass delete is many times slower")
a = ap.parse_args()
env = ENV
work = tempfile.mkdtemp(prefix="hoist-bench-unpack-", dir=a.workdir)


def clean(*paths):
    for p in paths:
        if os.path.lexists(p):
            subprocess.run(["rm", "-rf", p], check=True)
    os.sync()
    time.sleep(a.settle)


cache = os.path.join(work, "cache")
digest = subprocess.run([a.hoist, "-q", "--cache-dir", cache, "pull", a.ref], env=env, check=True,
                        capture_output=True, text=True).stdout.strip()
layout = os.path.join(cache, "oci-v1")
manifest = json.load(open(os.path.join(layout, "blobs", "sha256", digest[7:])))
blobs = [os.path.join(layout, "blobs", "sha256", l["digest"][7:]) for l in manifest["layers"]]
out = os.path.join(work, "out")

# Verification records are written by the first apply: one untimed
# unpack first, so every timed hoist run is warm in the same way.
subprocess.run([a.hoist, "-q", "--cache-dir", cache, "unpack", a.ref, out], env=env, check=True,
               capture_output=True)


def unpack_with(binary, extra):
    return lambda: timed([binary, "-q", "--cache-dir", cache, "unpack", a.ref, out], extra)


variants = ablations(a.hoist, a.hoist_zlib)
if a.no_ablate:
    variants = variants[:1]
warm = {name: unpack_with(b, e) for name, b, e in variants}
warm.update({
    "floor": lambda: (os.makedirs(out), timed(floor_cmd(blobs)))[1],
    "umoci": lambda: timed(["umoci", "unpack", "--rootless", "--image", "%s:%s" % (layout, digest[7:]), out]),
    "tar-xzf": lambda: (os.makedirs(out), timed(["sh", "-c", "for b in \"$@\"; do tar -xzf \"$b\" -C %s || exit 1; done" % out, "sh"] + blobs))[1],
})
res = {k: [] for k in warm}
for i in range(a.runs):
    order = list(warm) if i % 2 == 0 else list(reversed(warm))
    for name in order:
        clean(out)
        res[name].append(warm[name]())
        print("warm %-8s run %d: %.2f s" % (name, i + 1, res[name][-1][0]), file=sys.stderr)
clean(out)

cold = {}
if not a.no_cold:
    c2 = os.path.join(work, "cold-cache")
    lay2 = os.path.join(work, "cold-layout")
    cold = {
        "hoist": lambda: timed([a.hoist, "-q", "--cache-dir", c2, "unpack", a.ref, out]),
        "skopeo+umoci": lambda: timed(["sh", "-c", "skopeo copy --quiet --src-tls-verify=false docker://%s oci:%s:t && "
                                       "exec umoci unpack --rootless --image %s:t %s" % (a.ref, lay2, lay2, out)]),
    }
    cres = {k: [] for k in cold}
    for i in range(a.runs):
        order = list(cold) if i % 2 == 0 else list(reversed(cold))
        for name in order:
            clean(out, c2, lay2)
            cres[name].append(cold[name]())
            print("cold %-12s run %d: %.2f s" % (name, i + 1, cres[name][-1][0]), file=sys.stderr)
    clean(out, c2, lay2)
shutil.rmtree(work, ignore_errors=True)


def med(v, i):
    return statistics.median(x[i] for x in v)


print("image: %s (%d layers), %d alternating runs" % (a.ref, len(blobs), a.runs))
for name, v in res.items():
    print("warm %-12s wall median %7.2f s  peak RSS median %6.1f MiB" % (name, med(v, 0), med(v, 1)))
print("warm hoist/umoci   %.3f  (goal <= 0.10)" % (med(res["hoist"], 0) / med(res["umoci"], 0)))
print("warm hoist/tar-xzf %.3f" % (med(res["hoist"], 0) / med(res["tar-xzf"], 0)))
print("warm hoist/floor (one-core igzip of the layers) %.3f" % (med(res["hoist"], 0) / med(res["floor"], 0)))
for name, _, _ in variants[1:]:
    print("warm %s/hoist %.3f  (what it lacks buys this)" % (name, med(res[name], 0) / med(res["hoist"], 0)))
if cold:
    for name, v in cres.items():
        print("cold %-12s wall median %7.2f s  peak RSS median %6.1f MiB" % (name, med(v, 0), med(v, 1)))
    print("cold hoist/(skopeo+umoci) %.3f  (goal <= 0.10)" % (med(cres["hoist"], 0) / med(cres["skopeo+umoci"], 0)))
