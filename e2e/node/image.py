#!/usr/bin/env python3
"""Writes an OCI image-layout tarball from files on this machine, for `ctr images import`: the
test node reaches no registry, so its images are assembled here (one layer, no build engine).

  image.py --name localhost/k8s-ai/app:e2e --out app.tar \
      --file /usr/bin/curl:/usr/bin/curl --libs-of /usr/bin/curl --dir /tmp:1777 \
      --symlink /bin/sh:busybox --entrypoint /bin/sh --user 65532:65532

--file SRC:DST copies a file (mode kept); --tree SRC:DST a directory's files (but those under a
directory named like a --skip pattern); --libs-of BIN adds the shared libraries BIN loads (as
`ldd` lists them) and its dynamic loader; --text DST:CONTENT writes a small file; --dir
DST[:MODE[:UID]] makes a directory. @FILE reads more arguments from FILE, one a line. The tar is
deterministic: same inputs, same digest.
"""

import argparse
import fnmatch
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import tarfile

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def ldd_paths(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = []
    for line in out.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            paths.append(match.group(1))
    return paths


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.seen = set()

    def _parents(self, path: str):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/" + "/".join(parts[:i]), 0o755)

    def _info(self, path: str, kind, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
        return info

    def dir(self, path: str, mode: int, owner: int = 0):
        if path in self.seen or path == "/":
            return
        self._parents(path)
        self.seen.add(path)
        info = self._info(path, tarfile.DIRTYPE, mode)
        info.uid = info.gid = owner
        self.tar.addfile(info)

    def file(self, path: str, data: bytes, mode: int):
        if path in self.seen:
            return
        self._parents(path)
        self.seen.add(path)
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, path: str, target: str):
        self._parents(path)
        self.seen.add(path)
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def close(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def blob(out: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    out.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     fromfile_prefix_chars="@")
    parser.add_argument("--name", required=True, action="append", help="the image reference, e.g. localhost/k8s-ai/app:e2e (repeatable: more names for the same image)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--file", action="append", default=[], help="SRC:DST")
    parser.add_argument("--tree", action="append", default=[], help="SRC_DIR:DST_DIR, regular files only")
    parser.add_argument("--skip", action="append", default=[], help="a directory name pattern --tree leaves out, e.g. __pycache__")
    parser.add_argument("--libs-of", action="append", default=[], help="a dynamically linked binary")
    parser.add_argument("--text", action="append", default=[], help="DST:CONTENT")
    parser.add_argument("--dir", action="append", default=[], help="DST[:OCTAL MODE[:OWNER UID]]")
    parser.add_argument("--symlink", action="append", default=[], help="PATH:TARGET")
    parser.add_argument("--entrypoint", nargs="+", default=[])
    parser.add_argument("--cmd", nargs="+", default=[])
    parser.add_argument("--user", default="")
    parser.add_argument("--env", action="append", default=[])
    args = parser.parse_args()

    layer = Layer()
    for spec in args.dir:
        path, mode, owner = (spec.split(":") + ["", ""])[:3]
        layer.dir(path, int(mode or "755", 8), int(owner or "0"))
    for spec in args.file:
        src, _, dst = spec.partition(":")
        with open(src, "rb") as f:
            layer.file(dst or src, f.read(), os.stat(src).st_mode & 0o7777)
    for spec in args.tree:
        src, _, dst = spec.partition(":")
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = sorted(d for d in dirnames if not any(fnmatch.fnmatch(d, p) for p in args.skip))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        layer.file(os.path.join(dst, os.path.relpath(path, src)), f.read(), 0o644)
    for binary in args.libs_of:
        for lib in ldd_paths(binary):
            real = os.path.realpath(lib)
            with open(real, "rb") as f:
                layer.file(lib, f.read(), 0o755)
    for spec in args.text:
        dst, _, content = spec.partition(":")
        layer.file(dst, content.encode().decode("unicode_escape").encode(), 0o644)
    for spec in args.symlink:
        path, _, target = spec.partition(":")
        layer.symlink(path, target)
    layer_tar = layer.close()

    config = {
        "architecture": ARCH,
        "os": "linux",
        "config": {
            "Entrypoint": args.entrypoint or None,
            "Cmd": args.cmd or None,
            "User": args.user,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", *args.env],
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"]},
    }
    with tarfile.open(args.out, "w", format=tarfile.PAX_FORMAT) as out:
        layer_digest = blob(out, layer_tar)
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_digest = blob(out, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config_bytes)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": len(layer_tar)}],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        manifest_digest = blob(out, manifest_bytes)
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": ARCH, "os": "linux"},
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
            } for name in args.name],
        }
        for name, data in (("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()), ("index.json", json.dumps(index).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            out.addfile(info, io.BytesIO(data))
    print(f"{' '.join(args.name)}: {len(layer_tar) / 1e6:.1f} MB uncompressed ({args.out})")


if __name__ == "__main__":
    main()
