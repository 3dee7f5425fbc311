#!/usr/bin/env python3
"""Fleet: 8 hosts (8 hoist processes, each with its own cache) pull one image
at once, straight from the upstream registry, then through one pull-through
cache (distribution in proxy mode) cold and warm.

    scripts/bench-fleet.py [--hosts 8] [--repo rig/big:latest]
                           [--upstream-data /var/tmp/rig/registry/plain/data]

Starts its own two registries on free loopback ports: the upstream, serving
the rig's registry storage (read only in practice), and the pull-through
cache in front of it, both with access logs. hoist reaches the cache through
a containerd hosts.toml (--hosts-dir). Prints, per case, the wall time until
the last host is done and the bytes upstream served (summed from its access
log), and each host's bytes by host from `hoist --json pull`.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ap = argparse.ArgumentParser()
ap.add_argument("--hosts", type=int, default=8)
ap.add_argument("--repo", default="rig/big:latest")
ap.add_argument("--upstream-data", default="/var/tmp/rig/registry/plain/data")
ap.add_argument("--hoist", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "hoist"))
ap.add_argument("--workdir", default="/var/tmp")
a = ap.parse_args()

work = tempfile.mkdtemp(prefix="hoist-bench-fleet-", dir=a.workdir)
procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def registry(name, data, extra=""):
    port = free_port()
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "config.yml")
    with open(cfg, "w") as f:
        f.write("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n"
                "storage:\n  filesystem:\n    rootdirectory: %s\n"
                "http:\n  addr: 127.0.0.1:%d\n  secret: bench\n%s" % (data, port, extra))
    log = open(os.path.join(d, "access.log"), "w")
    procs.append(subprocess.Popen(["docker-registry", "serve", cfg], stdout=log, stderr=log))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return "127.0.0.1:%d" % port, os.path.join(d, "access.log")


LINE = re.compile(r'"GET (/v2/\S+) HTTP/[\d.]+" (\d{3}) (\d+)')


def served(log, repo):
    """(blob GETs, bytes) upstream served for the repo so far."""
    n = total = 0
    with open(log) as f:
        for line in f:
            m = LINE.search(line)
            if m and m.group(1).startswith("/v2/%s/" % repo):
                total += int(m.group(3))
                n += "/blobs/" in m.group(1)
    return n, total


up, up_log = registry("upstream", a.upstream_data)
proxy, _ = registry("proxy", os.path.join(work, "proxy-data"),
                    "proxy:\n  remoteurl: http://%s\n" % up)
hosts_dir = os.path.join(work, "hosts")
os.makedirs(os.path.join(hosts_dir, up))
with open(os.path.join(hosts_dir, up, "hosts.toml"), "w") as f:
    f.write('server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' % (up, proxy))
repo = a.repo.split(":")[0]
ref = "%s/%s" % (up, a.repo)


def fleet(case, via_mirror):
    before = served(up_log, repo)
    caches = [os.path.join(work, "%s-%d" % (case, i)) for i in range(a.hosts)]
    args = ["--hosts-dir", hosts_dir] if via_mirror else []
    t0 = time.monotonic()
    ps = [subprocess.Popen([a.hoist, "--json", "--cache-dir", c] + args + ["pull", ref],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for c in caches]
    outs = [p.communicate() for p in ps]
    wall = time.monotonic() - t0
    for p, (out, err) in zip(ps, outs):
        if p.returncode != 0:
            sys.exit("%s: a host failed: %s" % (case, err[-2000:]))
    by_host = {}
    for out, _ in outs:
        for h, n in json.loads(out)["bytes_by_host"].items():
            by_host[h] = by_host.get(h, 0) + n
    time.sleep(0.5)  # the access log is written asynchronously
    after = served(up_log, repo)
    for c in caches:
        shutil.rmtree(c, ignore_errors=True)
    return wall, after[0] - before[0], after[1] - before[1], by_host


try:
    rows = [
        ("direct", *fleet("direct", False)),
        ("mirror cold", *fleet("cold", True)),
        ("mirror warm", *fleet("warm", True)),
    ]
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
print("image: %s, %d hosts pulling at once, each into its own cache" % (a.repo, a.hosts))
print("%-12s %8s %16s %18s  %s" % ("case", "wall s", "upstream blobs", "upstream MiB", "hoist's bytes by host (MiB, all hosts)"))
for name, wall, blobs, nbytes, by_host in rows:
    hosts = ", ".join("%s %.1f" % ("upstream" if h == up else "mirror" if h == proxy else h, n / 2**20)
                      for h, n in sorted(by_host.items()))
    print("%-12s %8.2f %16d %18.1f  %s" % (name, wall, blobs, nbytes / 2**20, hosts))
shutil.rmtree(work, ignore_errors=True)
