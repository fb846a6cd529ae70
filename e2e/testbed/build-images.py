#!/usr/bin/env python3
"""Build the lazarus test-bed images without any image registry or builder.

Each image is a single-layer OCI image whose layer holds a static
/bin/busybox, one /bin/<applet> symlink per busybox applet, a minimal
/etc/passwd and /etc/group, and /tmp. Two images share that layer and differ
only in their command:

  pause     sleeps forever (the CRI sandbox image)
  busybox   /bin/sh (the workload image used by the e2e tests)

For every image the script writes an OCI image layout tar (for
`ctr images import`) and, with --push, uploads the blobs and the manifest to a
plain-HTTP Distribution registry through its HTTP API.

Everything is deterministic (fixed mtimes, owners, ordering, gzip header and
JSON encoding), so rebuilding gives the same digests. Python standard library
only.

Usage:
  build-images.py --busybox /bin/busybox --out DIR --registry 127.0.0.1:5000 [--push]

Prints one line per image: NAME REFERENCE MANIFEST_DIGEST LAYOUT_TAR
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request

# Fixed timestamp for every file and for the image "created" field. Override
# with SOURCE_DATE_EPOCH if an image must look newer; it stays reproducible.
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
CREATED = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH))

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# (short name, repository inside the registry, tag, command)
IMAGES = [
    ("pause", "lazarus/pause", "testbed", ["/bin/sleep", "2147483647"]),
    ("busybox", "lazarus/busybox", "testbed", ["/bin/sh"]),
]

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n"


def die(msg):
    print("build-images: error: " + msg, file=sys.stderr)
    sys.exit(1)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def is_static_elf(path):
    """True when PATH is an ELF executable without a PT_INTERP header."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
            return False
        endian = "<" if head[5] == 1 else ">"
        phoff = struct.unpack_from(endian + "Q", head, 0x20)[0]
        phentsize, phnum = struct.unpack_from(endian + "HH", head, 0x36)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type = struct.unpack(endian + "I", f.read(4))[0]
            if p_type == 3:  # PT_INTERP: needs a dynamic loader
                return False
    return True


def busybox_applets(busybox):
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True,
                         text=True).stdout
    names = sorted({n.strip() for n in out.split() if n.strip()})
    # Guard against odd output: applet names are plain file names.
    return [n for n in names if "/" not in n and n not in ("busybox", ".", "..")]


def tar_entry(name, kind, mode, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build_layer(busybox):
    """Return (uncompressed tar bytes, gzip bytes)."""
    with open(busybox, "rb") as f:
        bb = f.read()
    files = {
        "etc/passwd": PASSWD.encode(),
        "etc/group": GROUP.encode(),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d, mode in (("bin", 0o755), ("etc", 0o755), ("root", 0o700),
                        ("tmp", 0o1777)):
            tar.addfile(tar_entry(d + "/", tarfile.DIRTYPE, mode))
        tar.addfile(tar_entry("bin/busybox", tarfile.REGTYPE, 0o755, len(bb)),
                    io.BytesIO(bb))
        for applet in busybox_applets(busybox):
            tar.addfile(tar_entry("bin/" + applet, tarfile.SYMTYPE, 0o777,
                                  linkname="busybox"))
        for name in sorted(files):
            data = files[name]
            tar.addfile(tar_entry(name, tarfile.REGTYPE, 0o644, len(data)),
                        io.BytesIO(data))
    layer = raw.getvalue()
    gz = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of varying data.
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, compresslevel=6,
                       mtime=0) as z:
        z.write(layer)
    return layer, gz.getvalue()


def build_image(layer, layer_gz, cmd):
    """Return (blobs the manifest refers to as digest->bytes, manifest bytes)."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {"Env": [PATH_ENV], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        "history": [{"created": CREATED,
                     "created_by": "lazarus e2e/testbed/build-images.py"}],
    }
    config_b = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha256(config_b),
                   "size": len(config_b)},
        "layers": [{"mediaType": MT_LAYER_GZIP, "digest": sha256(layer_gz),
                    "size": len(layer_gz)}],
    }
    blobs = {sha256(config_b): config_b, sha256(layer_gz): layer_gz}
    return blobs, canonical_json(manifest)


def write_layout_tar(path, blobs, manifest_b, ref, tag):
    """Write an OCI image layout as a tar that `ctr images import` accepts."""
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": sha256(manifest_b),
            "size": len(manifest_b),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                # Full name for containerd's importer, tag for OCI tools.
                "io.containerd.image.name": ref,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }
    entries = [("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
               ("index.json", canonical_json(index))]
    all_blobs = dict(blobs)
    all_blobs[sha256(manifest_b)] = manifest_b
    for digest in sorted(all_blobs):
        entries.append(("blobs/sha256/" + digest.split(":", 1)[1],
                        all_blobs[digest]))
    tmp = path + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs/", "blobs/sha256/"):
            tar.addfile(tar_entry(d, tarfile.DIRTYPE, 0o755))
        for name, data in entries:
            tar.addfile(tar_entry(name, tarfile.REGTYPE, 0o644, len(data)),
                        io.BytesIO(data))
    os.replace(tmp, path)


class Registry:
    """Minimal client for the Distribution HTTP API (plain HTTP, no auth)."""

    def __init__(self, host):
        self.base = "http://" + host
        # Never route the loopback registry through an environment proxy.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method, url, data=None, headers=None, ok=(200,)):
        if not url.startswith("http"):
            url = self.base + url
        req = urllib.request.Request(url, data=data, method=method,
                                     headers=headers or {})
        try:
            resp = self.opener.open(req, timeout=60)
        except urllib.error.HTTPError as e:
            resp = e
        except urllib.error.URLError as e:
            die("%s %s: %s" % (method, url, e.reason))
        body = resp.read()
        if resp.status not in ok:
            die("%s %s: HTTP %d: %s" % (method, url, resp.status,
                                        body[:500].decode(errors="replace")))
        return resp

    def push_blob(self, repo, digest, data):
        head = self.request("HEAD", "/v2/%s/blobs/%s" % (repo, digest),
                            ok=(200, 404))
        if head.status == 200:
            return
        start = self.request("POST", "/v2/%s/blobs/uploads/" % repo,
                             data=b"", ok=(202,))
        location = start.headers.get("Location")
        if not location:
            die("registry gave no upload Location for " + repo)
        location = urllib.parse.urljoin(self.base + "/", location)
        sep = "&" if "?" in location else "?"
        self.request("PUT", location + sep + "digest=" + urllib.parse.quote(digest),
                     data=data, ok=(201,),
                     headers={"Content-Type": "application/octet-stream",
                              "Content-Length": str(len(data))})

    def push_manifest(self, repo, tag, manifest_b):
        resp = self.request("PUT", "/v2/%s/manifests/%s" % (repo, tag),
                            data=manifest_b, ok=(201,),
                            headers={"Content-Type": MT_MANIFEST})
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != sha256(manifest_b):
            die("registry stored %s:%s as %s, expected %s"
                % (repo, tag, got, sha256(manifest_b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--out", required=True, help="directory for layout tars")
    ap.add_argument("--registry", default="127.0.0.1:5000")
    ap.add_argument("--push", action="store_true",
                    help="upload the images to the registry")
    args = ap.parse_args()

    if not os.path.isfile(args.busybox):
        die(args.busybox + " not found (install busybox-static)")
    if not is_static_elf(args.busybox):
        die(args.busybox + " is not a static 64-bit ELF (install busybox-static)")
    os.makedirs(args.out, exist_ok=True)

    layer, layer_gz = build_layer(args.busybox)
    registry = Registry(args.registry) if args.push else None
    for name, repo, tag, cmd in IMAGES:
        ref = "%s/%s:%s" % (args.registry, repo, tag)
        blobs, manifest_b = build_image(layer, layer_gz, cmd)
        tar_path = os.path.join(args.out, name + "-oci.tar")
        write_layout_tar(tar_path, blobs, manifest_b, ref, tag)
        if registry:
            for digest, data in sorted(blobs.items()):
                registry.push_blob(repo, digest, data)
            registry.push_manifest(repo, tag, manifest_b)
        print(name, ref, sha256(manifest_b), tar_path)


if __name__ == "__main__":
    main()
