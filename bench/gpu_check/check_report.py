"""The GPU check's outputs: gpu_check.json, the one table it prints, and BENCHMARKS.md's "## GPU"
section. Standard library only, so that --write-benchmarks runs anywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

SECTION = "## GPU"
JSON_NAME, MD_NAME = "gpu_check.json", "GPU.md"
# How the device tool runs it (bench/gpu_check/README.md): carry [".gpu_bundle"], timeout_s 600.
GPU_COMMAND = ("set -o pipefail; PYTHONUNBUFFERED=1 python3 bench/gpu_check/check.py --bundle .gpu_bundle "
               "--out $OUT 2>&1 | tee $OUT/log.txt")
MFU_TARGET, EVAL_SPEEDUP_TARGET = 0.40, 3.0
PART_TITLES = {
    "environment": "machine", "matmul": "bf16 matmul ceiling", "model": "model", "prepare": "prepare (Ray Data)",
    "packed_loss": "(a) packed-loss equality", "train_full": "(b) full, ZeRO-3, Ray Train",
    "train_lora": "(c) LoRA, Ray Train", "eval": "(d) Scorer vs lm-eval HFLM", "eval_split": "(e) split cuda:0 + cpu",
}


def save(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / MD_NAME).write_text(markdown(results))


def failed(results: dict) -> list[str]:
    return [name for name, r in results.items() if name != "meta" and r.get("status") in ("error", "fail")]


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _gib(x) -> str:
    return "n/a" if not x else f"{x / 2**30:.1f} GiB"


def _e(x) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def failure(r: dict) -> str:
    """Why a part failed, in one line: an exception's first line, or what was outside its tolerance."""
    if r.get("status") == "error":
        # packed_loss before it named its first failing kernel itself
        erred = [f"{name}: {k.get('error')}" for name, k in r.get("kernels", {}).items() if k.get("status") == "error"]
        text = first_line(r.get("error") or (erred[0] if erred else None))
        return f"error: {text or 'an exception (traceback in gpu_check.json)'}"
    return f"outside tolerance{': ' + r['failed'] if r.get('failed') else ''}"


def figures(name: str, r: dict) -> str:
    """One cell: the figures that matter for this part (an error: its first line, then whatever the
    part measured before it)."""
    if r.get("status") == "skipped":
        return r.get("reason", "")
    render = FIGURES.get(name, lambda _: "")
    if r.get("status") == "error":
        try:
            measured = render(r)
        except (KeyError, TypeError):  # the exception came before the figures
            measured = ""
        return "; ".join(x for x in (failure(r)[:300], measured) if x)
    return render(r)


def _environment(r: dict) -> str:
    gpu = r.get("gpu") or {}
    where = f"{gpu['name']} ({_gib(gpu['memory_bytes'])}, CUDA {gpu['cuda']})" if gpu else f"CPU ({r['cpus']} cores)"
    pk = r.get("packages", {})
    vers = ", ".join(f"{k} {v.get('version', 'missing')}" for k, v in pk.items()
                     if k in ("torch", "transformers", "ray", "deepspeed", "peft", "lm_eval"))
    bundle = f"; bundle {r['bundle']['bytes'] / 2**20:.1f} MiB" if r.get("bundle") else ""
    return f"{where}, Python {r['python']}; {vers}{bundle}"


def _flops(x: float) -> str:
    return f"{x / 1e12:.1f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.1f} GFLOP/s"


def _matmul(r: dict) -> str:
    return f"{r['dtype']} {r['n']}^3: {_flops(r['flops_per_s'])} (median of {r['runs']})"


def _model(r: dict) -> str:
    return f"{r['params'] / 1e9:.3f}B parameters, {r['spec']}"


def _prepare(r: dict) -> str:
    return f"{r['rows']} packed rows of <= {r['seq_len']} tokens, {r['tokens']:,} tokens"


def _packed(r: dict) -> str:
    cells = []
    for kernel, k in r["kernels"].items():
        if k["status"] in ("skipped", "error"):
            cells.append(f"{kernel}: {k['status']}")
            continue
        mbs = "; ".join(f"mb{m}: max {_e(k[f'mb{m}']['max_abs_diff'])} (leak {_e(k[f'mb{m}']['leak_max_abs_diff'])})"
                        for m in (1, 2))
        rate = k["mb2"]["fwd_bwd_tokens_per_s"]
        timing = f"; fwd+bwd {rate:,.0f} tokens/s" if rate else ""
        cells.append(f"{kernel} {k['status']}: {mbs}{timing}")
    return f"{r['dtype']}, per-token |packed - alone|: " + " / ".join(cells)


def _train(r: dict) -> str:
    return (f"{r['tokens_per_s']:,.0f} tokens/s ({r['timed_steps']} of {r['steps']} steps, "
            f"{r['tokens_per_step']:,.0f} tokens/step, {r['attn_implementation']}); MFU {_pct(r['mfu_datasheet'])} "
            f"of the datasheet, {_pct(r['mfu_measured_matmul'])} of the measured matmul; peak "
            f"{_gib(r['peak_memory_bytes'])} ({r['memory_kind']}); loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}"
            + _cost(r.get("cost")))


def _cost(c: dict | None) -> str:
    """The cost record the report reads (train/cost.py), with plan's estimates beside it."""
    if not c:
        return ""
    wall = "—" if c["plan_wall_time_s"] is None else f"{c['plan_wall_time_s']:.0f}"
    device = "n/a" if c["device_bytes"] is None else _gib(c["device_bytes"])
    return (f"; cost.json: wall {c['wall_time_s']:.0f} s (plan {wall}), {c['accelerator_hours']:.3g} "
            f"{c['accelerator']}-hours, worker peak device {device} (plan {_gib(c['plan_device_bytes'])}), "
            f"host {_gib(c['host_bytes'])}, checkpoint {_gib(c['checkpoint_bytes'])} "
            f"(plan {_gib(c['plan_checkpoint_bytes'])})")


def _agreement(x: dict) -> str:
    ties = x["ties"]
    tie_note = f" ({len(ties)} ties, {sum(t['agree'] for t in ties)} alike)" if ties else ""
    return (f"agree {x['agree']}/{x['decided']} decided{tie_note}, max |dll| {_e(x['max_ll_diff'])} "
            f"({_e(x['max_ll_diff_per_token'])}/token)")


def _eval(r: dict) -> str:
    cells = []
    for p, x in r["protocols"].items():
        d = x["vs_lm_eval_default"]
        cells.append(f"{p}: ours {x['ours_questions_per_s']:.1f} q/s vs lm-eval {x['lm_eval_questions_per_s']:.1f} "
                     f"({x['speedup']:.2f}x; cold {x['ours_cold_s']:.2f}s vs {x['lm_eval_cold_s']:.2f}s), "
                     f"{_agreement(x)}; vs lm-eval's default (log-softmax in the model dtype): max |dll| "
                     f"{_e(d['max_ll_diff'])} "
                     f"({_e(d['max_ll_diff_per_token'])}/token), {d['ties']} ties")
    return (f"{r['dtype']}, {r['questions']} questions, median of {r['timed_passes']} passes after a cold one; "
            f"reference {r['reference']}, tolerance {_e(r['tolerance'])}; " + "; ".join(cells))


def _split(r: dict) -> str:
    cells = [f"{p}: {_agreement(x)}" for p, x in r["protocols"].items()]
    return f"modules per device {r['modules_per_device']}, head on {r['last_module_device']}; " + "; ".join(cells)


FIGURES = {"environment": _environment, "matmul": _matmul, "model": _model, "prepare": _prepare,
           "packed_loss": _packed, "train_full": _train, "train_lora": _train, "eval": _eval, "eval_split": _split}


def target(name: str, r: dict) -> str:
    if r.get("status") not in ("ok", "fail"):
        return ""
    if name == "train_full":
        mfu = r.get("mfu_datasheet")
        verdict = "no datasheet peak" if mfu is None else "met" if mfu >= MFU_TARGET else "not met"
        return f"MFU >= {MFU_TARGET:.0%}: {verdict}"
    if name == "eval":
        h = r["protocols"]["harness"]  # identical wherever the reference decides (ties: see the figures)
        met = h["speedup"] >= EVAL_SPEEDUP_TARGET and h["agree"] == h["decided"]
        verdict = "met" if met else "not met"
        return f">= {EVAL_SPEEDUP_TARGET:.0f}x lm-eval with identical predictions (harness): {verdict}"
    return ""


def table(results: dict) -> str:
    rows = ["| part | status | figures | target |", "|---|---|---|---|"]
    for name, r in results.items():
        if name == "meta":
            continue
        cell = figures(name, r).replace("|", "/").replace("\n", " ")
        rows.append(f"| {PART_TITLES.get(name, name)} | {r.get('status')} ({r.get('seconds', 0):.0f}s) | {cell} | "
                    f"{target(name, r)} |")
    return "\n".join(rows)


def markdown(results: dict) -> str:
    meta = results.get("meta", {})
    env = results.get("environment", {})
    gpu = (env.get("gpu") or {}).get("name")
    if meta.get("smoke"):
        lead = (f"CPU smoke run of {meta.get('date')} (the tiny model in fp32, a few steps): it shows the check "
                "runs, not GPU figures.")
    else:
        lead = f"Measured {meta.get('date')} on one {gpu}, in {meta.get('seconds', 0):.0f} s."
    bad = failed(results)
    failures = "".join(f"\n- {n}: {failure(results[n])}" for n in bad)
    return f"""{SECTION}

{lead}
`bench/gpu_check/check.py` (see bench/gpu_check/README.md) builds a randomly initialised 1.1B Llama
and runs med42-ray's GPU paths on it; each part reports its own failure.
Run on a GPU machine (device tool: carry `[".gpu_bundle"]`, timeout_s 600):

    {GPU_COMMAND}

{table(results)}
{("" if not bad else chr(10) + "Failed:" + failures + chr(10))}"""


def write_section(path: Path, text: str) -> None:
    """Replace the section in `path` (or append it), leaving the others alone."""
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = text.rstrip("\n") + "\n\n"
    new = pattern.sub(lambda _: body, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + body
    path.write_text(new.rstrip("\n") + "\n")
