"""The GPU check: med42-ray's GPU paths on one GPU, in one command, in under 10 minutes.

Builds a randomly initialised ~1.1B-parameter Llama (TinyLlama-1.1B's shape, no download) and runs,
each part catching and reporting its own failure so that one run gives every figure:

  matmul        bf16 8192^3 matrix product rate (median of timed runs): the MFU ceiling measured here
  prepare       `prepare` (Ray Data) on the embedded sample, packed to 4096 tokens
  packed_loss   (a) packed vs per-document losses, bf16, every attention kernel available, micro batch 1 and 2
  train_full    (b) full fine-tuning, ZeRO-3, bf16, Ray Train with one GPU worker (`run_train`)
  train_lora    (c) LoRA likewise
  eval          (d) our Scorer vs lm-evaluation-harness's HF backend on the sample's MedQA questions, bf16
  eval_split    (e) the Scorer on the model split between cuda:0 and cpu vs on one device (defect 1)

    python bench/gpu_check/check.py --bundle .gpu_bundle --out $OUT        # on the GPU machine
    python bench/gpu_check/check.py --smoke --out runs/gpu_check_smoke      # CPU: tiny model, same code
    python bench/gpu_check/check.py --write-benchmarks BENCHMARKS.md --results <out>/gpu_check.json

Writes <out>/gpu_check.json (after every part, so a run cut short keeps what it measured) and
<out>/GPU.md (the BENCHMARKS.md section), prints one table last, and exits 1 if any part failed.
With --bundle (build_bundle.py's carry folder) it first unpacks the packages the machine lacks and
runs again on top of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SITE_ENV = "MED42_GPU_CHECK_SITE"  # set once the bundle is on the path (the re-run does not unpack again)
STARTED_ENV = "MED42_GPU_CHECK_STARTED"
GPU_BUDGET_S = 570  # the device tool stops a command at 600 s
DEFAULT_SITE = Path("/tmp/med42_gpu_site")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="gpu_check.json and GPU.md")
    ap.add_argument("--work", type=Path, default=Path("/tmp/med42_gpu_check_work"),
                    help="model, prepared data, checkpoints (~35 GB on the GPU); keep it out of --out, whose "
                         "files travel back")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, the embedded tiny model in fp32, a few steps and questions; CUDA-only parts skipped")
    ap.add_argument("--bundle", type=Path, default=None,
                    help="build_bundle.py's carry folder: unpack its packages and run on top of them")
    ap.add_argument("--site", type=Path, default=DEFAULT_SITE, help="where the bundle is unpacked")
    ap.add_argument("--parts", default=None, help="comma-separated subset of the parts (default: all)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="seconds from the start (bundle unpacking included) that the parts may use: each part's "
                         "time limit is cut to what is left, and a part is not started with under 20 s left, so "
                         "the table is printed inside a 10-minute call (default: 570; --smoke: no limit)")
    ap.add_argument("--write-benchmarks", type=Path, default=None, metavar="BENCHMARKS_MD",
                    help="only write the '## GPU' section of this file from --results, then exit")
    ap.add_argument("--results", type=Path, default=None, help="a gpu_check.json (for --write-benchmarks)")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    args.work = args.work.resolve()
    # the first start's clock, carried over the run on top of the bundle
    args.started = float(os.environ.setdefault(STARTED_ENV, repr(time.time())))
    if args.budget_s is None and not args.smoke:
        args.budget_s = GPU_BUDGET_S
    args.bundle_site = os.environ.get(SITE_ENV)  # set when running on top of the bundle
    return args


def archive_for_this_python(bundle: Path) -> Path:
    name = f"site-cp{sys.version_info.major}{sys.version_info.minor}.tar.xz"
    archive = bundle / name
    if not archive.is_file():
        have = ", ".join(p.name for p in bundle.glob("site-*.tar.xz")) or "nothing"
        raise SystemExit(f"--bundle {bundle}: no {name} for this Python {sys.version.split()[0]} (it holds {have}); "
                         f"build it with bench/gpu_check/build_bundle.py --python-version "
                         f"{sys.version_info.major}.{sys.version_info.minor}")
    return archive


def unpack_bundle(archive: Path, site: Path) -> None:
    """Unpack once per archive: a stamp with its hash says the tree is complete and current."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    stamp = site / ".bundle_sha256"
    if stamp.is_file() and stamp.read_text() == digest:
        return
    started = time.perf_counter()
    site.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(site, filter="data")
    stamp.write_text(digest)
    print(f"unpacked {archive.name} into {site} in {time.perf_counter() - started:.1f}s", flush=True)


def run_on_bundle(args: argparse.Namespace) -> None:
    """Unpack the bundle and run this script again with it first on PYTHONPATH (before the image's
    own packages), so every import, Ray's worker processes' too, sees the same packages."""
    if args.bundle is None or os.environ.get(SITE_ENV):
        return
    unpack_bundle(archive_for_this_python(args.bundle.resolve()), args.site)
    env = dict(os.environ, **{SITE_ENV: str(args.site)})
    env["PYTHONPATH"] = os.pathsep.join([str(args.site)] + [p for p in [env.get("PYTHONPATH")] if p])
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)


def expose_code() -> None:
    """The repository and this folder on the path of this process and of Ray's workers (which
    unpickle the step hook defined here and import med42_ray)."""
    paths = [str(REPO), str(HERE)]
    sys.path[:0] = [p for p in paths if p not in sys.path]
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(current + [p for p in paths if p not in current])


def write_benchmarks(args: argparse.Namespace) -> int:
    import check_report

    if args.results is None:
        raise SystemExit("--write-benchmarks needs --results <gpu_check.json>")
    results = json.loads(args.results.read_text())
    check_report.write_section(args.write_benchmarks, check_report.markdown(results))
    print(f"wrote the '{check_report.SECTION}' section of {args.write_benchmarks} from {args.results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    expose_code()
    if args.write_benchmarks is not None:
        return write_benchmarks(args)
    run_on_bundle(args)
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import check_parts
    import check_report

    results = check_parts.run_all(args, on_update=lambda r: check_report.save(r, args.out))
    check_report.save(results, args.out)
    print(check_report.table(results), flush=True)
    print(f"\nresults: {args.out / check_report.JSON_NAME}, section: {args.out / check_report.MD_NAME}")
    return 1 if check_report.failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
