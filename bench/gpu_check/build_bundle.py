"""Build the package bundle that the GPU check carries to an offline GPU machine.

The machine (device library, kind nvidia-h200) starts bare and reaches no registry; its image has
torch, transformers 5.17, peft, accelerate, pyarrow, ... (image_packages.txt) but no Ray, DeepSpeed,
pydantic, ijson or lm-eval, and at most 64 MiB of files travel with a call (the repository
included). This script downloads the wheels those parts need, at the versions the test suite passed
with (constraints.txt), installs them into one directory tree for the target Python and platform,
trims Ray (its wheel alone is 79 MB), and packs the tree as one xz-compressed tar:

    .gpu_bundle/site-cp312.tar.xz     the tree check.py unpacks to /tmp/med42_gpu_site
    .gpu_bundle/bundle.json           what it holds: packages, versions, why, what was trimmed

    python bench/gpu_check/build_bundle.py                       # Python 3.12, for the GPU machine
    python bench/gpu_check/build_bundle.py --python-version 3.11 --dest /tmp/bundle311   # rehearsal here

Before packing, every requirement of every bundled package (its METADATA, markers evaluated for
the target Python) must be met by the bundle or the image, or be listed in NOT_NEEDED with the
reason: a missing wheel is found here, not on the GPU machine.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LIMIT_BYTES = 64 * 2**20  # what may travel with one call: repository + carried files
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]

# What the bundle carries, and why. Versions come from constraints.txt (the tested set).
BUNDLE = {
    "ray": "not on the image (Ray Data prepare, Ray Train); trimmed, see RAY_TRIM",
    "jsonschema": "Ray's", "jsonschema-specifications": "Ray's (jsonschema's)",
    "referencing": "Ray's (jsonschema's)", "rpds-py": "Ray's (referencing's)",
    "tensorboardx": "Ray Train's",
    "deepspeed": "not on the image; PyPI has only its sdist: built here as a wheel without compiled ops",
    "hjson": "DeepSpeed's",
    "pydantic": "our config models, DeepSpeed's and Ray Train's config", "pydantic-core": "pydantic's",
    "annotated-types": "pydantic's", "typing-inspection": "pydantic's",
    "typing-extensions": "pydantic needs >= 4.16; the image's version is not known",
    "ijson": "prepare streams JSON documents with it",
    "peft": "LoRA; the image's version is not known, so the tested one travels",
    "lm-eval": "the baseline evaluator (its HF backend); installed without its task dependencies",
    "dill": "lm-eval's HF backend imports it",
}
EXTRAS = {"ray": {"data", "train"}}
# Requirements of bundled packages that the check never imports (the rehearsal proves it).
NOT_NEEDED = {
    "lm-eval": ({"datasets", "evaluate", "pytablewriter", "rouge-score", "sqlitedict", "word2number",
                 "more-itertools"}, "task loading and metrics; the check calls only HFLM.loglikelihood"),
}
# Parts of Ray that a one-node Ray Data + Ray Train run never loads.
RAY_TRIM = {
    "ray/jars": "the Java worker (32 MB)",
    "ray/dashboard/client/build": "the dashboard's web page (the check starts no dashboard)",
    "ray/rllib": "reinforcement learning",
    "ray/serve": "model serving", "ray/llm": "LLM serving",
}


def read_pins(path: Path) -> dict[str, str]:
    """name -> version from a pip constraints file ('name==version' lines)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def read_image(path: Path) -> set[str]:
    return {canonicalize_name(line.split("==")[0]) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def target_flags(py: str) -> list[str]:
    tag = "cp" + py.replace(".", "")
    return ["--only-binary=:all:", "--python-version", py, "--implementation", "cp", "--abi", tag,
            "--abi", "abi3", "--abi", "none", *[f for p in PLATFORMS for f in ("--platform", p)],
            "--platform", "any"]


def fetch_wheels(pins: dict[str, str], py: str, wheels: Path) -> list[Path]:
    """Every BUNDLE package as a wheel for Python `py` (cached in `wheels`)."""
    wheels.mkdir(parents=True, exist_ok=True)
    found = []
    for name in BUNDLE:
        if name not in pins:
            raise SystemExit(f"constraints.txt pins no version of {name}: add it (the tested version)")
        have = find_wheel(wheels, name, pins[name], py)
        if have is None:
            if name == "deepspeed":
                build_deepspeed(pins[name], wheels)
            else:
                pip("download", "-q", "--no-deps", *target_flags(py), "-d", str(wheels), f"{name}=={pins[name]}")
            have = find_wheel(wheels, name, pins[name], py)
        if have is None:
            raise SystemExit(f"no wheel of {name}=={pins[name]} for Python {py} in {wheels}")
        found.append(have)
    return found


def find_wheel(wheels: Path, name: str, version: str, py: str) -> Path | None:
    tag = "cp" + py.replace(".", "")
    for w in sorted(wheels.glob("*.whl")):
        dist, ver, *_, pytag, _abi, _plat = w.stem.split("-")
        if canonicalize_name(dist) == name and ver == version and (pytag.startswith("py") or tag in pytag.split(".")):
            return w
    return None


def build_deepspeed(version: str, wheels: Path) -> None:
    """DeepSpeed ships an sdist only. Built without ops (DS_BUILD_OPS=0) it is pure Python: the
    check uses torch's AdamW and ZeRO's Python paths; any op is JIT-compiled where it is used."""
    env = {**os.environ, "DS_BUILD_OPS": "0"}
    pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), f"deepspeed=={version}", env=env)


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())


def unmet_requirements(wheels: list[Path], image: set[str], py: str) -> list[str]:
    """Requirements (for Python `py` on Linux x86-64) that neither the bundle nor the image meets."""
    bundled = {canonicalize_name(wheel_metadata(w)["Name"]) for w in wheels}
    env = {"python_version": py, "python_full_version": f"{py}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix"}
    missing = []
    for w in wheels:
        meta = wheel_metadata(w)
        owner = canonicalize_name(meta["Name"])
        skip = NOT_NEEDED.get(owner, (set(), ""))[0]
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            extras = EXTRAS.get(owner, set()) | {""}
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
                continue
            name = canonicalize_name(req.name)
            if name not in bundled and name not in image and name not in skip:
                missing.append(f"{owner} needs {req}")
    return missing


def install_tree(wheels: list[Path], py: str, site: Path) -> None:
    """The wheels installed as pip installs them for Python `py`, into `site` (no .pyc: the
    target's Python writes its own)."""
    shutil.rmtree(site, ignore_errors=True)
    pip("install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site), *target_flags(py),
        *map(str, wheels))


def trim_ray(site: Path) -> dict[str, int]:
    """Remove RAY_TRIM's parts and the symbol tables of Ray's binaries; bytes saved per item."""
    saved = {}
    for rel in RAY_TRIM:
        path = site / rel
        if path.exists():
            saved[rel] = tree_bytes(path)
            shutil.rmtree(path)
    strip = shutil.which("strip")
    if strip is None:
        print("note: no `strip` here; Ray's binaries keep their symbol tables (a larger bundle)")
        return saved
    before = 0
    binaries = [p for p in (site / "ray").rglob("*") if p.is_file() and is_elf(p)]
    for p in binaries:
        before += p.stat().st_size
        subprocess.run([strip, "--strip-unneeded", str(p)], check=True)
    saved["symbol tables of Ray's ELF files"] = before - sum(p.stat().st_size for p in binaries)
    return saved


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def xz_preset(text: str) -> int:
    """'9e' -> 9 | PRESET_EXTREME (xz's own notation)."""
    if not re.fullmatch(r"[0-9]e?", text):
        raise SystemExit(f"--xz-preset: 0-9, optionally followed by e (extreme), got {text!r}")
    return int(text[0]) | (lzma.PRESET_EXTREME if text.endswith("e") else 0)


def pack(site: Path, archive: Path, preset: int) -> None:
    """One xz tar of the tree, entries sorted and dated 0 so the same input gives the same bytes."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(".partial")
    with lzma.open(tmp, "wb", preset=preset) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for path in sorted(site.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            info = tar.gettarinfo(str(path), arcname=path.relative_to(site).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    tmp.replace(archive)


def working_tree_bytes() -> int:
    """What a device call sends besides carried paths: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return sum((REPO / f).stat().st_size for f in out.decode().split("\0") if f and (REPO / f).is_file())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe(wheels: list[Path]) -> dict[str, dict]:
    out = {}
    for w in wheels:
        meta = wheel_metadata(w)
        name = canonicalize_name(meta["Name"])
        out[name] = {"version": meta["Version"], "wheel": w.name, "why": BUNDLE[name]}
    return out


def archive_name(py: str) -> str:
    """The archive check.py looks for under --bundle for the Python that runs it."""
    return f"site-cp{py.replace('.', '')}.tar.xz"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python-version", default="3.12", help="the target machine's Python (default 3.12)")
    ap.add_argument("--dest", type=Path, default=REPO / ".gpu_bundle", help="the carry folder (git-ignored)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/med42_gpu_bundle_build"),
                    help="downloaded wheels (kept as a cache) and the staging tree")
    ap.add_argument("--constraints", type=Path, default=REPO / "constraints.txt")
    ap.add_argument("--xz-preset", default="9e", help="xz compression (default 9e: smallest, a few minutes on 2 "
                                                        "cores; 0 for a quick local rehearsal)")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    py = args.python_version
    if not re.fullmatch(r"3\.\d+", py):
        raise SystemExit(f"--python-version: expected e.g. 3.12, got {py!r}")
    pins = read_pins(args.constraints)
    image = read_image(HERE / "image_packages.txt")
    wheels = fetch_wheels(pins, py, args.work / "wheels")
    missing = unmet_requirements(wheels, image, py)
    if missing:
        raise SystemExit("requirements met by neither the bundle nor the image:\n  " + "\n  ".join(missing))
    site = args.work / f"site-cp{py.replace('.', '')}"
    install_tree(wheels, py, site)
    trimmed = trim_ray(site)
    archive = args.dest / archive_name(py)
    pack(site, archive, xz_preset(args.xz_preset))
    size, tree = archive.stat().st_size, working_tree_bytes()
    manifest = {"python": py, "archive": archive.name, "bytes": size, "sha256": sha256(archive),
                "unpacked_bytes": tree_bytes(site), "wheel_bytes": sum(w.stat().st_size for w in wheels),
                "packages": describe(wheels),
                "not_installed": {k: {"packages": sorted(v[0]), "why": v[1]} for k, v in NOT_NEEDED.items()},
                "ray_trimmed": {k: {"bytes": v, "what": RAY_TRIM.get(k, "")} for k, v in trimmed.items()}}
    (args.dest / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n")
    mib = 2**20
    print(f"{archive}: {size / mib:.1f} MiB ({manifest['unpacked_bytes'] / mib:.0f} MiB unpacked; "
          f"the wheels were {manifest['wheel_bytes'] / mib:.0f} MiB)")
    total = size + (args.dest / "bundle.json").stat().st_size + tree
    print(f"with the working tree ({tree / mib:.1f} MiB): {total / mib:.1f} MiB of the "
          f"{LIMIT_BYTES / mib:.0f} MiB a call carries")
    if total > LIMIT_BYTES:
        print("over the limit: trim more (RAY_TRIM) or carry less", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
