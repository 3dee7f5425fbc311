#!/usr/bin/env python3
"""Load on `hoist serve`: 200 concurrent POST /images for a set of names
(some of them tags of one digest), then GET /images/{name} until all are
ready. Prints the builds per digest, every answer's status class, the GET
latency percentiles while builds run, the server's peak RSS, and the total
time against the same builds run one after another with the CLI
(`hoist export`, each into a fresh cache).

    scripts/bench-serve.py [--names N ...] [--alias N] [--requests 200]
                           [--builds 2] [--hoist PATH] [--workdir DIR]

Default names: the ../shared/rig images at 127.0.0.1:5000 (images.sh);
`--alias K` first copies the first K names to a second tag (skopeo), so
that those pairs share a digest.
"""
import argparse
import concurrent.futures as cf
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ENV  # noqa: E402

RIG = ["rig/debian:base", "rig/debian:layered", "rig/debian:docker", "rig/debian:zstd",
       "rig/big:latest", "rig/multi:latest"]

ap = argparse.ArgumentParser()
ap.add_argument("--registry", default="127.0.0.1:5000")
ap.add_argument("--names", nargs="*", default=None)
ap.add_argument("--alias", type=int, default=4, help="extra tags of the first K names")
ap.add_argument("--requests", type=int, default=200)
ap.add_argument("--builds", type=int, default=2, help="--max-concurrent-builds")
ap.add_argument("--hoist", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "hoist"))
ap.add_argument("--workdir", default=None)
ap.add_argument("--skip-cli", action="store_true")
a = ap.parse_args()
work = a.workdir or tempfile.mkdtemp(prefix="hoist-bench-serve-", dir="/var/tmp")
os.makedirs(work, exist_ok=True)


def exists(ref):
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "docker://" + ref],
                          capture_output=True, env=ENV).returncode == 0


names = a.names or [f"{a.registry}/{n}" for n in RIG if exists(f"{a.registry}/{n}")]
base = list(names)
for n in base[: a.alias]:
    alias = n + "-alias" if ":" in n.rsplit("/", 1)[-1] else n + ":alias"
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                    "docker://" + n, "docker://" + alias], check=True, env=ENV)
    names.append(alias)
print(f"{len(names)} names: {', '.join(names)}")

data = os.path.join(work, "data")
shutil.rmtree(data, ignore_errors=True)
log = open(os.path.join(work, "serve.log"), "w")
srv = subprocess.Popen([a.hoist, "serve", "--listen", "127.0.0.1:0", "--data-dir", data,
                        "--max-concurrent-builds", str(a.builds)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, text=True)
url = None
for line in srv.stderr:
    log.write(line)
    m = re.search(r"listening on (http://\S+)", line)
    if m:
        url = m.group(1)
        break
threading.Thread(target=lambda: [log.write(x) for x in srv.stderr], daemon=True).start()


def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method,
                                 data=json.dumps(body).encode() if body else None)
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            out = (r.status, json.loads(r.read() or b"null"))
    except urllib.error.HTTPError as e:
        out = (e.code, json.loads(e.read() or b"null"))
    return out + (time.monotonic() - t,)


def enc(n):
    return urllib.parse.quote(n, safe="")


peak = [0]


def watch_rss():
    while srv.poll() is None:
        try:
            with open(f"/proc/{srv.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.05)


threading.Thread(target=watch_rss, daemon=True).start()
t0 = time.monotonic()
with cf.ThreadPoolExecutor(max_workers=50) as ex:
    posts = list(ex.map(lambda i: call("POST", "/images", {"name": names[i % len(names)]}),
                        range(a.requests)))
codes = {}
for st, _, _ in posts:
    codes[st] = codes.get(st, 0) + 1
lat = []
done = False
status = {}
while not done:
    done = True
    for n in names:
        st, rec, dt = call("GET", "/images/" + enc(n))
        lat.append(dt)
        status[n] = rec.get("status") if isinstance(rec, dict) else st
        if status[n] == "failed":
            sys.exit(f"{n} failed: {rec}")
        if status[n] != "ready":
            done = False
    if time.monotonic() - t0 > 3600:
        sys.exit(f"not ready after an hour: {status}")
total = time.monotonic() - t0
metrics = urllib.request.urlopen(url + "/metrics").read().decode()
builds = sum(float(m) for m in re.findall(r'hoist_images_build_duration_seconds_count\{status="\w+"\} (\S+)', metrics))
recs = json.loads(urllib.request.urlopen(url + "/images").read())
digests = {r["digest"] for r in recs}
srv.terminate()
srv.wait()

q = statistics.quantiles(lat, n=100)
print(f"POST answers: {dict(sorted(codes.items()))} (5xx: {sum(v for k, v in codes.items() if k >= 500)})")
print(f"distinct digests: {len(digests)}; builds run: {builds:.0f} "
      f"(per digest: {builds / max(len(digests), 1):.2f})")
print(f"GET /images/{{name}} while building: n={len(lat)} p50={q[49]*1000:.1f} ms "
      f"p95={q[94]*1000:.1f} ms p99={q[98]*1000:.1f} ms max={max(lat)*1000:.1f} ms")
print(f"server peak RSS: {peak[0] / 1024:.1f} MiB")
print(f"service total: {total:.2f} s")

if not a.skip_cli:
    cli_dir = os.path.join(work, "cli")
    shutil.rmtree(cli_dir, ignore_errors=True)
    os.makedirs(cli_dir)
    t1 = time.monotonic()
    for i, n in enumerate(names):
        subprocess.run([a.hoist, "-q", "--cache-dir", os.path.join(cli_dir, f"c{i}"), "export", n,
                        "-o", os.path.join(cli_dir, f"d{i}.ext4")], check=True, env=ENV,
                       stdout=subprocess.DEVNULL)
    seq = time.monotonic() - t1
    print(f"CLI, one export after another (fresh cache each): {seq:.2f} s; "
          f"service/CLI ratio {total / seq:.2f}")
    shutil.rmtree(cli_dir, ignore_errors=True)
shutil.rmtree(data, ignore_errors=True)
