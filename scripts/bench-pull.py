#!/usr/bin/env python3
"""Cold pull: hoist vs `skopeo copy docker://… oci:…`, alternating runs.

    scripts/bench-pull.py [--runs N] [--ref HOST/REPO:TAG] [--hoist PATH]

Each run pulls into a fresh, empty directory; outputs are deleted (and
synced) outside the timed region. Prints per-tool medians of wall time and
peak RSS (wait4's ru_maxrss of the tool's own process), and the ratio. Needs
a registry on loopback holding the image: ../shared/rig (images.sh) builds
rig/big:latest (324 MB, 4 layers) at 127.0.0.1:5000.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ENV, timed  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--ref", default="127.0.0.1:5000/rig/big:latest")
ap.add_argument("--hoist", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "hoist"))
ap.add_argument("--workdir", default=None, help="where outputs go (default: a temp dir on /var/tmp)")
a = ap.parse_args()

env = ENV
work = a.workdir or tempfile.mkdtemp(prefix="hoist-bench-", dir="/var/tmp")


def fresh(name):
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    os.sync()
    return d


tools = {
    "hoist": lambda d: [a.hoist, "-q", "--cache-dir", d, "pull", a.ref],
    "skopeo": lambda d: ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                         "docker://" + a.ref, "oci:%s:t" % d],
}
res = {k: [] for k in tools}
# one warm-up each, uncounted
for name, cmd in tools.items():
    timed(cmd(fresh(name)))
for i in range(a.runs):
    order = list(tools) if i % 2 == 0 else list(reversed(tools))
    for name in order:
        d = fresh(name)
        res[name].append(timed(tools[name](d)))
# re-pull of a cached tag (hoist): one manifest request, nothing else
d = fresh("hoist-warm")
timed(tools["hoist"](d))
warm = [timed(tools["hoist"](d))[0] for _ in range(a.runs)]
shutil.rmtree(work, ignore_errors=True)

print("image: %s, %d alternating runs" % (a.ref, a.runs))
for name, v in res.items():
    w = [x[0] for x in v]
    m = [x[1] for x in v]
    print("%-7s wall median %.3f s (min %.3f, max %.3f)  peak RSS median %.1f MiB (max %.1f)"
          % (name, statistics.median(w), min(w), max(w), statistics.median(m), max(m)))
print("hoist re-pull of the cached tag: median %.3f s" % statistics.median(warm))
hw = statistics.median([x[0] for x in res["hoist"]])
sw = statistics.median([x[0] for x in res["skopeo"]])
print("ratio hoist/skopeo (wall, medians): %.2f" % (hw / sw))
