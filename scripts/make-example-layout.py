#!/usr/bin/env python3
"""Write examples/hello: a tiny, deterministic OCI image layout (standard
library only), so hoist's first command works offline on a fresh machine:

    hoist inspect oci:examples/hello:latest

Re-running it reproduces the same bytes and digests."""
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "examples", "hello")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(os.path.join(out, "blobs", "sha256"))


def blob(data: bytes) -> str:
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d


def layer(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, mode, data in files:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            ti.mode = mode
            if data is None:
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            else:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    gz = gzip.compress(raw, compresslevel=9, mtime=0)
    return raw, gz


raw, gz = layer([
    ("etc", 0o755, None),
    ("etc/os-release", 0o644, b'NAME="hoist example"\nID=hoist-example\n'),
    ("hello.sh", 0o755, b"#!/bin/sh\necho 'hello from a hoist example image'\n"),
])
layer_digest = blob(gz)
config = {
    "created": "2023-11-14T22:13:20Z",
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello"],
        "Cmd": ["/hello.sh"],
        "WorkingDir": "/",
        "Labels": {"org.opencontainers.image.title": "hoist example"},
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
}
cfg = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
cfg_digest = blob(cfg)
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": len(cfg)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": len(gz)}],
}
man = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
man_digest = blob(man)
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": man_digest,
        "size": len(man),
        "platform": {"os": "linux", "architecture": "amd64"},
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }],
}
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump(index, f, indent=2)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
print(man_digest)
