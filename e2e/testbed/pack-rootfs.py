#!/usr/bin/env python3
"""Pack a root file system tree as a single-layer OCI image layout tar.

testbed.sh builds the test bed's Debian workload image (Debian's packages
installed into an overlay of the cached minbase root) and packs the tree
with this script, which `ctr images import` then loads.

Deterministic for a given tree: entries depth first, each directory's names
in byte order, numeric owners only (no user or group names), modification
times clamped to --epoch (never later; files from Debian's packages keep
theirs, files the build generated get the epoch), no access or change times,
hard links as links to the first path in that order, a gzip header without
name or time.
The contents of /dev, /proc and /sys are left out (the runtime mounts its
own); extended attributes are not packed.

Usage:
  pack-rootfs.py --root DIR --out FILE.tar --ref NAME:TAG --epoch SECONDS [--cmd /bin/sh]

Prints the manifest digest. Python standard library only.
"""

import argparse
import gzip
import hashlib
import importlib.util
import io
import os
import shutil
import stat
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
# The layout writer and JSON encoding of build-images.py (same directory).
_spec = importlib.util.spec_from_file_location("build_images", os.path.join(HERE, "build-images.py"))
images = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(images)

MT_LAYER_GZIP = images.MT_LAYER_GZIP
# Directories kept empty in the layer.
EMPTY_DIRS = ("dev", "proc", "sys")
CHUNK = 1 << 20


def die(msg):
    print("pack-rootfs: error: " + msg, file=sys.stderr)
    sys.exit(1)


def walk(root, rel=""):
    """Relative paths below root: depth first, each directory's names in byte order."""
    full = os.path.join(root, rel) if rel else root
    for name in sorted(os.listdir(full), key=os.fsencode):
        child = os.path.join(rel, name) if rel else name
        yield child
        path = os.path.join(root, child)
        if os.path.isdir(path) and not os.path.islink(path) and child not in EMPTY_DIRS:
            yield from walk(root, child)


def tar_info(root, rel, epoch, links):
    path = os.path.join(root, rel)
    st = os.lstat(path)
    info = tarfile.TarInfo(rel + ("/" if stat.S_ISDIR(st.st_mode) else ""))
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = min(int(st.st_mtime), epoch)
    if stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info.type = tarfile.LNKTYPE
            info.linkname = links[key]
        else:
            if st.st_nlink > 1:
                links[key] = rel
            info.type = tarfile.REGTYPE
            info.size = st.st_size
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        return None  # sockets: not in images
    return info


class HashingWriter:
    """A file object that hashes what is written through it."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


def build_layer(root, epoch, tmpdir):
    """Writes the gzip layer to a file; returns (path, diff_id, digest, size, entries)."""
    gz_path = os.path.join(tmpdir, "layer.tar.gz")
    links = {}
    entries = 0
    with open(gz_path, "wb") as out:
        gz_hash = HashingWriter(out)
        with gzip.GzipFile(filename="", mode="wb", fileobj=gz_hash, compresslevel=1, mtime=0) as z:
            raw_hash = HashingWriter(z)
            with tarfile.open(fileobj=raw_hash, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rel in walk(root):
                    info = tar_info(root, rel, epoch, links)
                    if info is None:
                        continue
                    entries += 1
                    if info.type == tarfile.REGTYPE:
                        with open(os.path.join(root, rel), "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
    return gz_path, raw_hash.digest(), gz_hash.digest(), gz_hash.size, entries


def write_layout(out, layer_path, layer_digest, layer_size, config_b, manifest_b, ref, tag, epoch):
    index = {
        "schemaVersion": 2,
        "mediaType": images.MT_INDEX,
        "manifests": [{
            "mediaType": images.MT_MANIFEST,
            "digest": images.sha256(manifest_b),
            "size": len(manifest_b),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
        }],
    }
    small = {images.sha256(config_b): config_b, images.sha256(manifest_b): manifest_b}

    def entry(name, kind, mode, size=0):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.mtime = kind, mode, size, epoch
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs/", "blobs/sha256/"):
            tar.addfile(entry(d, tarfile.DIRTYPE, 0o755))
        for name, data in (("oci-layout", images.canonical_json({"imageLayoutVersion": "1.0.0"})),
                           ("index.json", images.canonical_json(index))):
            tar.addfile(entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        blobs = sorted(list(small) + [layer_digest])
        for digest in blobs:
            name = "blobs/sha256/" + digest.split(":", 1)[1]
            if digest == layer_digest:
                with open(layer_path, "rb") as f:
                    tar.addfile(entry(name, tarfile.REGTYPE, 0o644, layer_size), f)
            else:
                data = small[digest]
                tar.addfile(entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    os.replace(tmp, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ref", required=True, help="image name with tag")
    ap.add_argument("--epoch", required=True, type=int, help="latest modification time in the layer")
    ap.add_argument("--cmd", default="/bin/sh")
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(args.root, "usr")):
        die(args.root + " does not look like a root file system")
    tag = args.ref.rsplit(":", 1)[1] if ":" in args.ref.rsplit("/", 1)[-1] else "latest"
    created = images.time.strftime("%Y-%m-%dT%H:%M:%SZ", images.time.gmtime(args.epoch))
    tmpdir = tempfile.mkdtemp(prefix="pack-rootfs.", dir=os.path.dirname(os.path.abspath(args.out)))
    try:
        layer_path, diff_id, digest, size, entries = build_layer(args.root, args.epoch, tmpdir)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Env": [images.PATH_ENV, "LANG=C.UTF-8"], "Cmd": [args.cmd], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "lazarus e2e/testbed/testbed.sh (debian image)"}],
        }
        config_b = images.canonical_json(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": images.MT_MANIFEST,
            "config": {"mediaType": images.MT_CONFIG, "digest": images.sha256(config_b), "size": len(config_b)},
            "layers": [{"mediaType": MT_LAYER_GZIP, "digest": digest, "size": size}],
        }
        manifest_b = images.canonical_json(manifest)
        write_layout(args.out, layer_path, digest, size, config_b, manifest_b, args.ref, tag, args.epoch)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    print("pack-rootfs: %d entries, layer %s (%d bytes gzip)" % (entries, digest, size), file=sys.stderr)
    print(images.sha256(manifest_b))


if __name__ == "__main__":
    main()
