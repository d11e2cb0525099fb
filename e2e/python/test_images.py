"""What Dockerfile.operator and Dockerfile.sidecar promise, checked without a Docker engine (none
runs on this machine, so no image is built here): the files are multi-stage, pinned, distroless and
non-root; the binaries, built for the same musl target, are static; each one runs as uid 65532 in
a mount namespace whose root filesystem is read-only and holds nothing but the binary and the CA
bundle (what distroless/static provides). The operator is a debug build (its image's release
profile only optimises the same code); the sidecar is built exactly as its image builds it, since
its profile also changes the allocator's and the linker's work (mimalloc, packed relocations)."""

import io
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, SAMPLES, TARGET, free_port, start_emulator

IMAGES = {"Dockerfile.operator": "k8s-ai-operator", "Dockerfile.sidecar": "ai-sidecar"}
# The cargo profile each image is built with, and the directory cargo puts it in.
PROFILES = {"k8s-ai-operator": ("release", "release"), "ai-sidecar": ("sidecar", "sidecar")}
# What this test builds instead, to save a release build of the operator.
TEST_PROFILES = {"k8s-ai-operator": ("dev", "debug"), "ai-sidecar": PROFILES["ai-sidecar"]}
MUSL = f"{platform.machine()}-unknown-linux-musl"
NONROOT = "65532"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / dockerfile).read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (l.strip() for l in text.splitlines())
        if line and not line.startswith("#")
    ]


def build_args(steps) -> dict[str, str]:
    """The defaults of the ARGs declared before the first FROM."""
    first_from = next(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return dict(args.split("=", 1) for op, args in steps[:first_from] if op == "ARG" and "=" in args)


@pytest.mark.parametrize("dockerfile,binary", IMAGES.items())
def test_dockerfile_is_multi_stage_pinned_distroless_and_non_root(dockerfile, binary):
    steps = instructions(dockerfile)
    defaults = build_args(steps)
    assert re.fullmatch(r"\S+/rust:\d+\.\d+\.\d+-\S+", defaults["RUST_IMAGE"]), f"builder not pinned to a Rust release: {defaults}"
    assert defaults["BASE_IMAGE"].startswith("gcr.io/distroless/static") and defaults["BASE_IMAGE"].endswith(":nonroot"), defaults
    assert defaults["BINARY"] == "build", "by default the image compiles its binary"
    froms = [args for op, args in steps if op == "FROM"]
    # The binary comes from the build stage, or with BINARY=prebuilt from the context as it is.
    assert froms == ["${RUST_IMAGE} AS build", "scratch AS prebuilt", "${BINARY} AS binary", "${BASE_IMAGE}"], froms
    stage_starts = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    prebuilt = steps[stage_starts[1] + 1 : stage_starts[2]]
    assert prebuilt == [("COPY", f"{binary} /out/{binary}")], prebuilt
    last_stage = steps[stage_starts[-1] :]
    assert ("COPY", f"--from=binary /out/{binary} /{binary}") in last_stage
    assert ("USER", f"{NONROOT}:{NONROOT}") in last_stage
    assert ("ENTRYPOINT", json.dumps([f"/{binary}"])) in last_stage
    assert not [args for op, args in last_stage if op == "RUN"], "the final stage runs nothing (distroless has no shell)"
    build = " ".join(args for op, args in steps if op == "RUN")
    profile, directory = PROFILES[binary]
    profile_flag = "--release" if profile == "release" else f"--profile {profile}"
    for flag in (f"--package {binary}", profile_flag, "--locked", '--target "$(uname -m)-unknown-linux-musl"', f"--bin {binary}"):
        assert flag in build, f"{dockerfile}: the build lacks {flag}"
    assert f'target/$(uname -m)-unknown-linux-musl/{directory}/{binary}' in build, f"{dockerfile}: copies another build"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "target", "e2e/.run"} <= set(ignored)


@pytest.fixture(scope="module")
def built_images(tmp_path_factory):
    """The OCI archives e2e/node/images.sh builds with buildah from the Dockerfiles (the ones the real
    node runs): scripts/run-tests.sh builds them first (K8S_AI_NODE_IMAGES), else they are built here."""
    prebuilt = os.environ.get("K8S_AI_NODE_IMAGES")
    if prebuilt:
        return pathlib.Path(prebuilt)
    out = tmp_path_factory.mktemp("images")
    subprocess.run([str(ROOT / "e2e" / "node" / "images.sh"), str(out)], check=True)
    return out


def oci_image(archive: pathlib.Path) -> tuple[dict, dict[str, tarfile.TarInfo], dict[str, bytes]]:
    """An OCI archive's image config, its files (path → entry) and the contents of its regular files,
    layers applied in order."""
    entries: dict[str, tarfile.TarInfo] = {}
    contents: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        blob = lambda digest: tar.extractfile("blobs/sha256/" + digest.split(":")[1]).read()
        index = json.loads(tar.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(blob(layer["digest"]))) as layer_tar:
                for entry in layer_tar:
                    path = "/" + entry.name.lstrip("./").rstrip("/")
                    entries[path] = entry
                    if entry.isfile():
                        contents[path] = layer_tar.extractfile(entry).read()
    return config, entries, contents


@pytest.mark.parametrize("archive,binary", [("operator.tar", "k8s-ai-operator"), ("ai-sidecar.tar", "ai-sidecar")])
def test_built_image_is_the_binary_on_distroless_as_non_root(built_images, archive, binary):
    config, files, contents = oci_image(built_images / archive)
    assert config["config"]["User"] == f"{NONROOT}:{NONROOT}"
    assert config["config"]["Entrypoint"] == [f"/{binary}"]
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == binary
    version = re.search(r'(?m)^version = "(.+)"', (ROOT / "Cargo.toml").read_text()).group(1)
    assert labels["org.opencontainers.image.version"] == version
    assert files[f"/{binary}"].mode & 0o111, "the binary is executable"
    assert contents[f"/{binary}"][:4] == b"\x7fELF"
    # What distroless/static holds and nothing else: no shell, no package manager, no libc.
    assert b"BEGIN CERTIFICATE" in contents[CA_BUNDLE]
    assert contents["/usr/share/zoneinfo/Europe/Paris"][:4] == b"TZif"
    assert b"nonroot:x:65532:65532:" in contents["/etc/passwd"]
    assert files["/tmp"].mode & 0o1777 == 0o1777
    assert (files["/home/nonroot"].uid, files["/home/nonroot"].mode & 0o777) == (65532, 0o700)
    allowed = re.compile(r"^/(etc|etc/ssl|etc/ssl/certs|usr|usr/share|usr/share/zoneinfo(/.*)?|tmp|home|home/nonroot)$")
    unexpected = [p for p in files if not allowed.match(p) and p not in (f"/{binary}", CA_BUNDLE, "/etc/passwd", "/etc/group")]
    assert not unexpected, f"files distroless/static does not have: {unexpected[:20]}"


@pytest.fixture(scope="module")
def jail_dir():
    """A directory uid 65532 may read (pytest's own temporary directories are private to root)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="ai-jail-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def binaries(jail_dir):
    """The two binaries built for the images' target, copied where uid 65532 may read them."""
    out = {}
    for name in IMAGES.values():
        profile, directory = TEST_PROFILES[name]
        args = ["cargo", "build", "--locked", "--package", name, "--profile", profile, "--target", MUSL, "--bin", name]
        build = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        assert build.returncode == 0, build.stderr[-3000:]
        out[name] = jail_dir / name
        shutil.copy(TARGET / MUSL / directory / name, out[name])
    return out


@pytest.mark.parametrize("binary", IMAGES.values())
def test_binary_is_static(binaries, binary):
    described = subprocess.run(["file", "-b", str(binaries[binary])], capture_output=True, text=True, check=True).stdout
    assert "statically linked" in described or "static-pie linked" in described, described
    program_headers = subprocess.run(["readelf", "-lW", str(binaries[binary])], capture_output=True, text=True, check=True).stdout
    assert "INTERP" not in program_headers, "a static binary asks for no dynamic loader"
    if binary == "ai-sidecar":
        dynamic = subprocess.run(["readelf", "-dW", str(binaries[binary])], capture_output=True, text=True, check=True).stdout
        assert "(RELR)" in dynamic, f"the sidecar's relocations are not packed (sidecar/build.rs):\n{dynamic}"
        # Linked by rust-lld, which lays out the functions of sidecar/symbol-order.txt together, and
        # stripped at link time (both sidecar/build.rs).
        comment = subprocess.run(["readelf", "-p", ".comment", str(binaries[binary])], capture_output=True, text=True, check=True).stdout
        assert "Linker: LLD" in comment, f"the sidecar was not linked by rust-lld (sidecar/build.rs):\n{comment}"
        sections = subprocess.run(["readelf", "-SW", str(binaries[binary])], capture_output=True, text=True, check=True).stdout
        assert ".symtab" not in sections, "the sidecar's symbols are not stripped (sidecar/build.rs)"


def jailed(binary, binds=(), env=None) -> list[str]:
    """The command running `binary` as uid 65532 with a read-only root holding only what is bound."""
    args = ["setpriv", f"--reuid={NONROOT}", f"--regid={NONROOT}", "--clear-groups", "bwrap", "--unshare-user", "--unshare-ipc", "--unshare-pid", "--die-with-parent", "--clearenv", "--tmpfs", "/"]
    args += ["--ro-bind", str(binary), f"/{binary.name}", "--ro-bind", CA_BUNDLE, CA_BUNDLE]
    for source, target in binds:
        args += ["--ro-bind", str(source), target]
    for name, value in (env or {}).items():
        args += ["--setenv", name, value]
    return args + ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/", f"/{binary.name}"]


def test_operator_runs_as_non_root_on_a_read_only_root(binaries):
    crdgen = subprocess.run(jailed(binaries["k8s-ai-operator"]) + ["crdgen"], capture_output=True, text=True, timeout=60)
    assert crdgen.returncode == 0, crdgen.stderr
    assert crdgen.stdout == (ROOT / "manifests" / "crds" / "crds.yaml").read_text()


def test_sidecar_serves_as_non_root_on_a_read_only_root(binaries, jail_dir, tmp_path):
    emulator = start_emulator(tmp_path)
    config = jail_dir / "config.yaml"
    # The seed's objects with static test keys instead of IRSA, and the inference profile named
    # (no cluster, so no operator to resolve it).
    seed = "".join("---\n" + re.sub(r"(?m)^\s*irsaRoleArn:.*\n", "", p.read_text()) for p in sorted(SAMPLES.glob("*.yaml")))
    config.write_text(re.sub(r"(?m)^(  modelId: .*\n)", r"\1  inferenceProfile: geographic\n", seed))
    config.chmod(0o644)
    port, admin = free_port(), free_port()
    env = {
        "AI_SIDECAR_NAMESPACE": "ai-workloads",
        "AI_SIDECAR_LISTEN": f"127.0.0.1:{port}",
        "AI_SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": emulator.url,
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    cmd = jailed(binaries["ai-sidecar"], [(config, "/etc/ai-sidecar/config.yaml")], env)
    proc = subprocess.Popen(cmd + ["--standalone", "--config", "/etc/ai-sidecar/config.yaml"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz") as r:
                    assert r.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the jailed sidecar never became ready"
                time.sleep(0.2)
        uid_line = next(l for l in open(f"/proc/{proc.pid}/status") if l.startswith("Uid:"))
        assert uid_line.split()[1:] == [NONROOT] * 4, uid_line
        body = json.dumps({"messages": [{"role": "user", "content": "Explain Kubernetes operators in two sentences."}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invoke/ai-workloads/claude-haiku", data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            answer = json.loads(r.read())
        assert set(answer) == {"content", "inputTokens", "outputTokens", "stopReason", "costUSD"}
        assert answer["content"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        emulator.proc.terminate()
        emulator.proc.wait(timeout=10)
