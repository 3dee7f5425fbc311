"""Shared by the bench-*.py scripts: one timed whole-process run."""
import os
import subprocess
import sys
import time

# Loopback registries must never go through a proxy.
ENV = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")


def timed(cmd, extra_env=None):
    """Run `cmd`; return (wall seconds, peak RSS MiB of its largest
    process, from wait4's ru_maxrss). Exits the script if it fails."""
    env = dict(ENV, **(extra_env or {}))
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), p.stderr.read().decode()[-2000:]))
    return wall, ru.ru_maxrss / 1024.0


def floor_cmd(blobs):
    """The inflate floor: ISA-L's igzip (Debian's `isal` package) inflating
    each layer blob on one core to /dev/null."""
    return ["sh", "-c", 'for b in "$@"; do igzip -d -c < "$b" || exit 1; done > /dev/null', "sh"] + blobs


def ablations(hoist, hoist_zlib):
    """hoist as built, and what each part of the inflate work buys: the
    zlib-rs build (no ISA-L), the stages on one thread, no verification
    records, and the spool unbounded on disk (as before it was bounded).
    Each is (name, binary, extra environment)."""
    out = [("hoist", hoist, {})]
    if hoist_zlib:
        out.append(("hoist-zlib", hoist_zlib, {}))
    out.append(("hoist-1stage", hoist, {"HOIST_BENCH_ABLATE": "split"}))
    out.append(("hoist-norec", hoist, {"HOIST_BENCH_ABLATE": "records"}))
    out.append(("hoist-spill", hoist, {"HOIST_BENCH_ABLATE": "spill"}))
    return out
