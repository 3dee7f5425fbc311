#!/usr/bin/env python3
"""Layer-shared erofs disks against standalone erofs exports.

    scripts/bench-shared.py [--runs N] [--base HOST/REPO:TAG] [--big HOST/REPO:TAG]
                            [--workdir DIR] [--hoist PATH]

Builds 10 images on one base (default 127.0.0.1:5000/rig/debian:layered)
in an OCI layout: the base plus one small layer of its own each. app1
deletes a base file (a whiteout), app2 replaces one, app3 makes a base
directory opaque; the rest add files. Then reports:

- bytes: every layer file plus the 10 METAs, against the 10 standalone
  erofs images (goal <= 0.20x); each META against its standalone image
  (goal <= 3 %);
- time: exporting app1..app9 with --shared-layers once the base's file
  exists (app0 made it), against the standalone export of the same image,
  runs alternating (goal <= 0.20x each, median);
- first export: --big (default rig/big) with --shared-layers into an empty
  directory, against its standalone export (goal <= 1.2x);
- peak RSS of every hoist run (goal <= 128 MiB).

Blobs are in the cache before any timed run. Outputs are deleted, synced
and settled outside the timed region.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ENV, timed  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--base", default="127.0.0.1:5000/rig/debian:layered")
ap.add_argument("--big", default="127.0.0.1:5000/rig/big:latest")
ap.add_argument("--workdir", default="/var/tmp")
ap.add_argument("--settle", type=float, default=5.0)
ap.add_argument("--hoist", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "hoist"))
a = ap.parse_args()
work = tempfile.mkdtemp(prefix="hoist-bench-shared-", dir=a.workdir)
cache = os.path.join(work, "cache")
layout = os.path.join(work, "apps")
H = [a.hoist, "-q", "--cache-dir", cache]


def run(cmd):
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)


def settle():
    subprocess.run(["sync"], check=True)
    time.sleep(a.settle)


def blob(data):
    d = hashlib.sha256(data).hexdigest()
    p = os.path.join(layout, "blobs", "sha256", d)
    with open(p, "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)


def small_layer(i):
    """App i's own layer: a file each; app1 deletes a base file, app2
    replaces one, app3 makes a base directory opaque."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name, data=b"", kind=tarfile.REGTYPE, mode=0o644):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.size, ti.mtime = kind, mode, len(data), 1_700_000_000
            t.addfile(ti, io.BytesIO(data) if data else None)
        add("opt", kind=tarfile.DIRTYPE, mode=0o755)
        add("opt/app", kind=tarfile.DIRTYPE, mode=0o755)
        add("opt/app/app%d" % i, (b"app %d\n" % i) * (200 + 5000 * i))
        add("etc", kind=tarfile.DIRTYPE, mode=0o755)
        if i == 1:
            add("etc/.wh.issue")
        if i == 2:
            add("etc/os-release", b"PRETTY_NAME=app2\n")
        if i == 3:
            add("usr", kind=tarfile.DIRTYPE, mode=0o755)
            add("usr/share", kind=tarfile.DIRTYPE, mode=0o755)
            add("usr/share/doc", kind=tarfile.DIRTYPE, mode=0o755)
            add("usr/share/doc/.wh..wh..opq")
            add("usr/share/doc/README", b"only this\n")
    return buf.getvalue()


# The base, copied into an OCI layout; ten images on it.
run(["skopeo", "copy", "--src-tls-verify=false", "docker://" + a.base, "oci:%s:base" % layout])
index = json.load(open(os.path.join(layout, "index.json")))
bm = index["manifests"][0]
base_m = json.load(open(os.path.join(layout, "blobs", "sha256", bm["digest"][7:])))
base_c = json.load(open(os.path.join(layout, "blobs", "sha256", base_m["config"]["digest"][7:])))
apps = []
own_layer = []
for i in range(10):
    tar = small_layer(i)
    ld, ls = blob(gzip.compress(tar, mtime=0))
    cfg = json.loads(json.dumps(base_c))
    cfg["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(tar).hexdigest())
    own_layer.append("sha256-%s.v1.erofs" % hashlib.sha256(tar).hexdigest())
    cd, cs = blob(json.dumps(cfg).encode())
    m = json.loads(json.dumps(base_m))
    m["config"] = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs}
    m["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls})
    md, ms = blob(json.dumps(m).encode())
    index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
                               "size": ms, "annotations": {"org.opencontainers.image.ref.name": "app%d" % i}})
    apps.append("oci:%s:app%d" % (layout, i))
json.dump(index, open(os.path.join(layout, "index.json"), "w"))
for r in apps + [a.big]:
    run(H + ["pull", r])

rss = []


def export(ref, out, shared=None):
    cmd = H + ["export", ref, "--format", "erofs", "-o", out]
    if shared:
        cmd += ["--shared-layers", shared]
    t, m = timed(cmd)
    rss.append(m)
    return t


# Bytes: 10 standalone images against the layer files and 10 METAs.
alone_dir = os.path.join(work, "alone")
layers = os.path.join(work, "layers")
metas = os.path.join(work, "metas")
os.makedirs(alone_dir)
os.makedirs(metas)
alone, meta = [], []
for i, r in enumerate(apps):
    p = os.path.join(alone_dir, "app%d.erofs" % i)
    export(r, p)
    alone.append(os.path.getsize(p))
    q = os.path.join(metas, "app%d.meta" % i)
    export(r, q, layers)
    meta.append(os.path.getsize(q))
layer_bytes = sum(os.path.getsize(os.path.join(layers, f)) for f in os.listdir(layers) if f.endswith(".erofs"))
records = sum(os.path.getsize(os.path.join(layers, f)) for f in os.listdir(layers) if f.endswith(".rec"))
shared_total = layer_bytes + sum(meta)
print("bytes: 10 standalone erofs %.1f MiB; layer files %.1f MiB + records %.1f MiB + 10 METAs %.2f MiB"
      % (sum(alone) / 2**20, layer_bytes / 2**20, records / 2**20, sum(meta) / 2**20))
print("bytes ratio (layer files + METAs) / standalone: %.3f (goal <= 0.20); with records %.3f"
      % (shared_total / sum(alone), (shared_total + records) / sum(alone)))
print("META / its standalone image: max %.2f %%, median %.2f %% (goal <= 3 %%)"
      % (max(100 * m / s for m, s in zip(meta, alone)), statistics.median(100 * m / s for m, s in zip(meta, alone))))
shutil.rmtree(alone_dir)
shutil.rmtree(metas)

# Time: app1..app9 once the base's file exists, against standalone.
out = os.path.join(work, "out.erofs")
ratios = []
for i in range(1, 10):
    ts, tl = [], []
    for _ in range(a.runs):
        # Only the base's files stay: app i's own layer is built each run.
        for f in (own_layer[i], own_layer[i] + ".rec"):
            if os.path.exists(os.path.join(layers, f)):
                os.remove(os.path.join(layers, f))
        settle()
        ts.append(export(apps[i], out, layers))
        os.remove(out)
        settle()
        tl.append(export(apps[i], out))
        os.remove(out)
    r = statistics.median(ts) / statistics.median(tl)
    ratios.append(r)
    print("app%d: shared %.3f s, standalone %.3f s, ratio %.3f" % (i, statistics.median(ts), statistics.median(tl), r))
print("time ratio, images 2-10: median %.3f, max %.3f (goal <= 0.20 each)" % (statistics.median(ratios), max(ratios)))

# First export of a big image into an empty directory.
ts, tl = [], []
big_layers = os.path.join(work, "big-layers")
for _ in range(a.runs):
    ts.append(export(a.big, out, big_layers))
    shutil.rmtree(big_layers)
    os.remove(out)
    settle()
    tl.append(export(a.big, out))
    os.remove(out)
    settle()
print("first export of %s: shared %.3f s, standalone %.3f s, ratio %.3f (goal <= 1.2)"
      % (a.big, statistics.median(ts), statistics.median(tl), statistics.median(ts) / statistics.median(tl)))
print("peak RSS of any hoist run: %.1f MiB (goal <= 128)" % max(rss))
shutil.rmtree(work)
