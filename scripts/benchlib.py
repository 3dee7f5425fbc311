"""Shared by the bench-*.py scripts: one timed whole-process run."""
import os
import subprocess
import sys
import time

# Loopback registries must never go through a proxy.
ENV = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")


def timed(cmd):
    """Run `cmd`; return (wall seconds, peak RSS MiB of its largest
    process, from wait4's ru_maxrss). Exits the script if it fails."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), p.stderr.read().decode()[-2000:]))
    return wall, ru.ru_maxrss / 1024.0
