#!/usr/bin/env python3
"""Push an image with `skopeo copy` to `hoist serve` and to a distribution
registry (Debian's docker-registry), in alternating runs on the same
machine, each into a fresh data directory. Prints, as medians:

- the push wall time, hoist over distribution (goal <= 1.0: hoist verifies
  while it streams, with no extra pass);
- the time from push start to the image's disk being ready, against
  `hoist export` of the same image from the registry into a fresh cache
  (goal <= 1.3);
- the server's peak RSS (VmHWM) over the push, and over push + build
  (goal <= 128 MiB: blobs stream to disk, never held in memory).

    scripts/bench-push.py [--ref 127.0.0.1:5000/rig/big:latest] [--runs 3]
                          [--hoist PATH] [--workdir DIR] [--settle SECS]

The image is first copied once into a local OCI layout, so every push
reads the same local files; outputs are deleted outside the timed region.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ENV, timed  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--ref", default="127.0.0.1:5000/rig/big:latest")
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--hoist", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "hoist"))
ap.add_argument("--workdir", default=None)
ap.add_argument("--settle", type=float, default=2.0)
ap.add_argument("--format", default="ext4")
a = ap.parse_args()
hoist = os.path.abspath(a.hoist)
work = a.workdir or tempfile.mkdtemp(prefix="hoist-bench-push-", dir="/var/tmp")
os.makedirs(work, exist_ok=True)
src = os.path.join(work, "src")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_http(url, secs=30):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.05)
    sys.exit("no answer from " + url)


def hwm_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def clean(path):
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["sync"])
    time.sleep(a.settle)


def skopeo_push(dest):
    return timed(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                  f"oci:{src}:img", f"docker://{dest}"])[0]


def run_hoist():
    data = os.path.join(work, "hoist-data")
    clean(data)
    port = free_port()
    p = subprocess.Popen([hoist, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                          "--format", a.format], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        t0 = time.monotonic()
        push = skopeo_push(f"127.0.0.1:{port}/bench/img:v1")
        push_rss = hwm_mib(p.pid)
        name = urllib.parse.quote(f"127.0.0.1:{port}/bench/img:v1", safe="")
        while True:
            r = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/images/{name}"))
            if r["status"] == "ready":
                break
            if r["status"] == "failed":
                sys.exit("build failed: %s" % r)
            time.sleep(0.05)
        ready = time.monotonic() - t0
        return push, ready, push_rss, hwm_mib(p.pid)
    finally:
        p.terminate()
        p.wait()
        clean(data)


def run_distribution():
    data = os.path.join(work, "dist-data")
    clean(data)
    os.makedirs(data)
    port = free_port()
    cfg = os.path.join(work, "dist.yml")
    with open(cfg, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {data}\n"
                f"http:\n  addr: 127.0.0.1:{port}\n")
    p = subprocess.Popen(["/usr/bin/docker-registry", "serve", cfg], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/")
        return skopeo_push(f"127.0.0.1:{port}/bench/img:v1")
    finally:
        p.terminate()
        p.wait()
        clean(data)


def run_export():
    cache = os.path.join(work, "export-cache")
    out = os.path.join(work, "export.img")
    clean(cache)
    wall, _ = timed([hoist, "--cache-dir", cache, "--insecure-registry", a.ref.split("/")[0],
                     "-q", "export", a.ref, "-o", out, "--format", a.format])
    os.unlink(out)
    clean(cache)
    return wall


import urllib.parse  # noqa: E402

if not os.path.isdir(src):
    subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                    f"docker://{a.ref}", f"oci:{src}:img"], check=True, env=ENV)
rows = {"hoist push": [], "distribution push": [], "push to ready": [], "hoist export": [],
        "rss push": [], "rss push+build": []}
for i in range(a.runs):
    push, ready, rss, rss_all = run_hoist()
    rows["hoist push"].append(push)
    rows["push to ready"].append(ready)
    rows["rss push"].append(rss)
    rows["rss push+build"].append(rss_all)
    rows["distribution push"].append(run_distribution())
    rows["hoist export"].append(run_export())
    print(f"run {i + 1}: hoist push {push:.2f} s (ready {ready:.2f} s, {rss:.1f}/{rss_all:.1f} MiB), "
          f"distribution {rows['distribution push'][-1]:.2f} s, export {rows['hoist export'][-1]:.2f} s",
          flush=True)
m = {k: statistics.median(v) for k, v in rows.items()}
print(f"\nmedians of {a.runs} runs, {a.ref}, workdir {work}:")
print(f"  push wall time: hoist {m['hoist push']:.2f} s, distribution {m['distribution push']:.2f} s, "
      f"ratio {m['hoist push'] / m['distribution push']:.3f} (goal <= 1.0)")
print(f"  push start to ready: {m['push to ready']:.2f} s, hoist export from the registry "
      f"{m['hoist export']:.2f} s, ratio {m['push to ready'] / m['hoist export']:.3f} (goal <= 1.3)")
print(f"  server peak RSS: {m['rss push']:.1f} MiB over the push, {m['rss push+build']:.1f} MiB "
      f"with the build (goal <= 128 MiB)")
