"""Rehearse the GPU machine's install on this CPU machine, so that a missing wheel is found here.

1. A fresh virtual environment with only the packages of the GPU image that the check touches
   (image_packages.txt; KINDS.md's versions where it gives them, torch as the CPU build), then
   every package the image does not list is removed again (what pip pulled in as a dependency).
2. The bundle, built for this Python with build_bundle.py (same builder, --python-version of this
   interpreter), into a scratch folder.
3. `check.py --smoke --bundle <that folder>` in the fresh environment: unpack, run again on top of
   the bundle, every part on CPU.

    python bench/gpu_check/rehearse.py [--python python3.11] [--root /tmp/med42_rehearsal]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# The image's packages that the check imports, directly or through what it imports. Unpinned where
# KINDS.md gives no version (the newest for this Python then).
IMAGE_SUBSET = [
    "torch==2.13.0",  # the image has 2.11.0+cu130; here the CPU build on this machine's disk
    "transformers==5.17.0", "tokenizers==0.23.2", "huggingface-hub==1.33.0", "safetensors==0.8.0",
    "accelerate==1.15.0", "numpy", "peft", "pyarrow", "pandas", "scipy", "scikit-learn", "sacrebleu",
    "grpcio", "protobuf", "msgpack", "pyyaml", "requests", "click", "filelock", "packaging", "psutil",
    "py-cpuinfo", "ninja", "einops", "tqdm", "aiohttp", "fsspec", "jinja2", "regex", "matplotlib", "xxhash",
    "nvidia-ml-py", "attrs", "cloudpickle", "pillow", "typer", "hf-xet",
]
KEEP = {"pip", "setuptools", "wheel"}


def run(*cmd: str) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, text=True, capture_output=False)


def image_names() -> set[str]:
    lines = (HERE / "image_packages.txt").read_text().splitlines()
    return {canonicalize_name(line.split("==")[0]) for line in lines if line.strip() and not line.startswith("#")}


def make_venv(python: str, venv: Path) -> Path:
    shutil.rmtree(venv, ignore_errors=True)
    run(python, "-m", "venv", str(venv))
    py = venv / "bin" / "python"
    run(str(py), "-m", "pip", "install", "-q", *IMAGE_SUBSET)
    installed = json.loads(subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], check=True,
                                          capture_output=True, text=True).stdout)
    extra = sorted(d["name"] for d in installed
                   if canonicalize_name(d["name"]) not in image_names() | KEEP)
    if extra:  # pulled in as dependencies here, absent on the GPU image: they would hide a missing wheel
        print(f"removing what the GPU image does not have: {', '.join(extra)}", flush=True)
        run(str(py), "-m", "pip", "uninstall", "-q", "-y", *extra)
    return py


def python_version(py: Path | str) -> str:
    return subprocess.run([str(py), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                          check=True, capture_output=True, text=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default="python3", help="the interpreter of the fresh environment")
    ap.add_argument("--root", type=Path, default=Path("/tmp/med42_rehearsal"))
    ap.add_argument("--reuse-venv", action="store_true", help="keep an environment made by an earlier run")
    args = ap.parse_args()
    venv = args.root / "venv"
    py = venv / "bin" / "python" if args.reuse_venv and (venv / "bin" / "python").exists() else \
        make_venv(args.python, venv)
    bundle = args.root / "bundle"
    run(sys.executable, str(HERE / "build_bundle.py"), "--python-version", python_version(py), "--dest", str(bundle),
        "--xz-preset", "1")  # the size that matters is the GPU bundle's
    shutil.rmtree(args.root / "site", ignore_errors=True)
    out = args.root / "out"
    proc = subprocess.run([str(py), str(HERE / "check.py"), "--smoke", "--bundle", str(bundle), "--site",
                           str(args.root / "site"), "--out", str(out), "--work", str(args.root / "work")], cwd=REPO)
    print(f"rehearsal: check.py --smoke exited {proc.returncode}; results in {out}", flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
