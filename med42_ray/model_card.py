"""The model card (README.md) of an exported model, in the form huggingface_hub reads and writes.

An export keeps what it was made from in `med42_ray_training.json` (FACTS_FILE): the base model,
the training data sources with prepare's row counts and decontamination summary (its
manifest.json), and the hyperparameters. The card is a view of those facts plus the evaluations
of that export found under the run directory, which become its `model-index` (huggingface_hub's
EvalResult). The export writes the card before any evaluation exists; `med42-ray push` (and
`write_card` after an evaluation) writes it again with the evaluations found then.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from med42_ray.layout import EXPORT_ADAPTER

FACTS_FILE = "med42_ray_training.json"
CARD_FILE = "README.md"
# A Hub model id ("owner/name"): only such a base_model is put in the card's metadata, which the
# Hub validates; a local directory or the embedded tiny Llama is named in the text only.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SOURCE_FIELDS = ("format", "path", "weight", "domain", "read", "rejected", "duplicates", "contaminated",
                 "sampled_out", "kept", "kept_copies", "tokens", "trainable_tokens")


def training_facts(train: Any, job: Any, manifest: dict, dtype: str) -> dict:
    """What an export of this run was made from: `train` the run's TrainConfig, `job` its
    trainer.TrainJob, `manifest` prepare's manifest.json, `dtype` the training dtype."""
    prepare = manifest.get("config", {}).get("prepare", {})
    sources = {name: {k: s.get(k) for k in SOURCE_FIELDS} for name, s in manifest["sources"].items()}
    removed: dict[str, int] = {}
    for s in manifest["sources"].values():
        for benchmark, n in s.get("contaminated", {}).items():
            removed[benchmark] = removed.get(benchmark, 0) + n
    benchmarks = manifest.get("benchmarks", {})
    hyper = {
        "strategy": train.strategy, "epochs": job.epochs, "total_steps": job.total_steps,
        "steps_per_epoch": job.steps_per_epoch, "learning_rate": train.resolved_lr(),
        "lr_schedule": "linear warmup, cosine decay", "warmup_ratio": train.warmup_ratio,
        "min_lr_ratio": train.min_lr_ratio, "weight_decay": train.weight_decay,
        "adam_betas": list(train.adam_betas), "adam_eps": train.adam_eps, "max_grad_norm": train.max_grad_norm,
        "micro_batch_size": train.micro_batch_size, "grad_accum": train.grad_accum,
        "num_workers": train.scaling.num_workers,
        "global_batch_rows": train.micro_batch_size * train.grad_accum * train.scaling.num_workers,
        "seq_len": job.seq_len, "packing": "documents packed, attention kept within each", "dtype": dtype,
        "zero_stage": train.resolved_zero_stage(), "seed": job.seed,
    }
    if train.strategy == "lora":
        hyper["adapters"] = train.adapter_settings()  # the peft method and its own settings
    return {
        "base_model": job.model,
        "chat_template": manifest.get("template"),
        "system_prompt": prepare.get("system_prompt"),
        "hyperparameters": hyper,
        "data": {"sources": sources, "sequences": manifest.get("sequences"), "tokens": manifest.get("tokens"),
                 "packing_efficiency": manifest.get("packing_efficiency")},
        "decontamination": {"benchmark_items": benchmarks.get("items", {}), "rows_removed": removed,
                            "index": benchmarks.get("index", {})},
    }


def write_facts(out: Path, facts: dict) -> None:
    (out / FACTS_FILE).write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n")


def read_facts(export_dir: Path) -> dict:
    path = Path(export_dir) / FACTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{export_dir}: no {FACTS_FILE}; it is not a med42-ray export "
                                "(or one exported before model cards existed: export it again)")
    return json.loads(path.read_text())


# -- evaluations --------------------------------------------------------------------------------

def evaluations(export_dir: Path, eval_roots: list[Path]) -> list[dict]:
    """The benchmark results of this export in every evaluate summary (results.json) under
    `eval_roots`, one per (benchmark, protocol), the newest file's first. A LoRA export (adapter or
    merged) counts as evaluated by an evaluation of the base with its adapter, as the pipeline runs it."""
    export_dir = Path(export_dir).resolve()
    adapter, base = _adapter_of(export_dir), read_facts(export_dir)["base_model"]
    files = {f.resolve() for root in eval_roots if Path(root).is_dir() for f in Path(root).rglob("results.json")}
    found: dict[tuple[str, str], dict] = {}
    for f in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True):
        for entry in _summary_models(f):
            how = _how_evaluated(entry, export_dir, adapter, base)
            for benchmark, m in (entry.get("benchmarks") or {}).items():
                key = (benchmark, entry.get("protocol", ""))
                if how and key not in found and isinstance(m, dict) and "acc" in m:
                    found[key] = {"benchmark": benchmark, "protocol": key[1], "acc": m["acc"],
                                  "acc_stderr": m.get("acc_stderr"), "n": m.get("n"), "how": how, "file": str(f)}
    return sorted(found.values(), key=lambda r: (r["protocol"], r["benchmark"]))


def _adapter_of(export_dir: Path) -> Path | None:
    """The adapter a LoRA export holds or was merged from (a sibling `adapter/` of `merged/`)."""
    if (export_dir / "adapter_config.json").is_file():
        return export_dir
    sibling = export_dir.parent / EXPORT_ADAPTER
    return sibling if (sibling / "adapter_config.json").is_file() else None


def _summary_models(path: Path) -> list[dict]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []  # not an evaluate summary: other results.json files may sit under a run dir
    models = summary.get("models") if isinstance(summary, dict) else None
    if not isinstance(models, dict):
        return []
    return [{**m, "protocol": m.get("protocol", summary.get("protocol", ""))} for m in models.values()
            if isinstance(m, dict)]


def _how_evaluated(entry: dict, export_dir: Path, adapter: Path | None, base: str) -> str | None:
    def same(p: Any, q: Path | None) -> bool:
        return bool(p) and q is not None and Path(p).resolve() == q

    if entry.get("adapter") is None and same(entry.get("model"), export_dir):
        return "this model"
    on_its_base = entry.get("model") == base or same(entry.get("model"), Path(base).resolve())
    if adapter is not None and on_its_base and same(entry.get("adapter"), adapter):
        return "the base with this adapter" if adapter != export_dir else "this adapter on its base"
    return None


def eval_results(found: list[dict]) -> list:
    from huggingface_hub import EvalResult

    return [EvalResult(task_type="text-generation", task_name="zero-shot multiple choice",
                       dataset_type=r["benchmark"], dataset_name=r["benchmark"],
                       dataset_args={"num_few_shot": 0, "questions": r["n"]},
                       metric_type="acc", metric_name=f"accuracy ({r['protocol']})", metric_config=r["protocol"],
                       metric_value=r["acc"], metric_args={"evaluated_as": r["how"], "tool": "med42-ray evaluate"})
            for r in found]


# -- the card -----------------------------------------------------------------------------------

def build_card(facts: dict, export_name: str, found: list[dict], model_name: str):
    """A huggingface_hub ModelCard: metadata (base model, library, tags, model-index) and text."""
    from huggingface_hub import ModelCard, ModelCardData

    base = facts["base_model"]
    data = ModelCardData(
        library_name="peft" if export_name == "adapter" else "transformers",
        base_model=base if HUB_ID.match(base) and not Path(base).exists() else None,
        pipeline_tag="text-generation", tags=["medical", "med42-ray", facts["hyperparameters"]["strategy"]],
        model_name=model_name if found else None, eval_results=eval_results(found) or None)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_text(facts, export_name, found, model_name)}")


def write_card(export_dir: Path, export_name: str, eval_roots: list[Path], model_name: str | None = None) -> Path:
    """(Re)write `export_dir`/README.md from its facts and the evaluations under `eval_roots`."""
    export_dir = Path(export_dir)
    facts = read_facts(export_dir)
    card = build_card(facts, export_name, evaluations(export_dir, eval_roots),
                      model_name or default_model_name(facts, export_name))
    path = export_dir / CARD_FILE
    card.save(path)
    return path


def default_model_name(facts: dict, export_name: str) -> str:
    """'meta-llama/Llama-2-7b-hf' trained LoRA, merged -> 'Llama-2-7b-hf-med42-lora-merged'."""
    kind = {"model": "full", "adapter": "lora", "merged": "lora-merged"}.get(export_name, export_name)
    return f"{Path(facts['base_model']).name}-med42-{kind}"


def _text(facts: dict, export_name: str, found: list[dict], model_name: str) -> str:
    h = facts["hyperparameters"]
    what = {"model": "full-parameter fine-tune", "merged": "LoRA fine-tune, adapter merged into the base",
            "adapter": "LoRA adapter"}.get(export_name, export_name)
    system = f'"{facts["system_prompt"]}"' if facts.get("system_prompt") else "none"
    lines = [f"# {model_name}", "",
             (f"A {what} of `{facts['base_model']}` with med42-ray (the Med42 recipe on Ray): "
              f"{h['epochs']} epoch(s), {h['total_steps']} optimizer steps."), "",
             "## Chat template", "",
             (f"The tokenizer carries the template the model was trained with (`{facts['chat_template']}`), "
              f"with the default system prompt put in when a conversation has none: {system}."), "",
             "```python", "from transformers import AutoTokenizer",
             'tok = AutoTokenizer.from_pretrained("<this repo>")',
             ('text = tok.apply_chat_template([{"role": "user", "content": "..."}], '
              "tokenize=False, add_generation_prompt=True)"), "```", ""]
    lines += _data_section(facts) + _decontam_section(facts) + _hyper_section(h) + _eval_section(found)
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows] + [""]


def _counts(d: dict | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((d or {}).items())) or "0"


def _data_section(facts: dict) -> list[str]:
    d = facts["data"]
    rows = [[name, s["format"], f"`{s['path']}`", s["weight"], s["read"], s["kept"], s["kept_copies"],
             _counts(s["rejected"]), s["duplicates"], _counts(s["contaminated"]), s["tokens"]]
            for name, s in d["sources"].items()]
    return (["## Training data", "",
             f"{d['sequences']} packed sequences, {d['tokens']} tokens (packing efficiency {d['packing_efficiency']}).", ""]
            + _table(["source", "format", "path", "weight", "read", "kept", "kept with repeats", "rejected",
                      "duplicates", "contaminated (removed)", "tokens"], rows))


def _decontam_section(facts: dict) -> list[str]:
    dc = facts["decontamination"]
    idx = dc.get("index", {})
    rows = [[b, n, dc["rows_removed"].get(b, 0)] for b, n in sorted(dc["benchmark_items"].items())]
    return (["## Decontamination", "",
             ("Training rows that contain an evaluation item, or a long piece of one, were removed before "
              f"training: {idx.get('n', '?')}-gram coverage of at least {idx.get('min_coverage', '?')} of an item "
              "part, a long run of shared words, or a short item contained whole, checked against "
              f"{idx.get('items', '?')} benchmark items."), ""]
            + _table(["benchmark", "items checked", "training rows removed"], rows))


def _hyper_section(h: dict) -> list[str]:
    rows = [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in h.items()]
    return ["## Training hyperparameters", ""] + _table(["setting", "value"], rows)


def _eval_section(found: list[dict]) -> list[str]:
    if not found:
        return ["## Evaluation", "", "Not evaluated yet (`med42-ray evaluate`; `med42-ray push` adds the results).", ""]
    rows = [[r["benchmark"], r["protocol"], f"{r['acc']:.4f}",
             "" if r["acc_stderr"] is None else f"{r['acc_stderr']:.4f}", r["n"], r["how"]] for r in found]
    return (["## Evaluation", "", "Zero-shot accuracy (`med42-ray evaluate`; also in the metadata as `model-index`).", ""]
            + _table(["benchmark", "protocol", "acc", "stderr", "questions", "evaluated as"], rows))
