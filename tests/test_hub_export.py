"""Hub-ready exports: the chat template the model was trained with, generation_config.json, a model
card huggingface_hub reads (with the evaluations as model-index), `export_merged`, `med42-ray merge`,
and `med42-ray push` through huggingface_hub up to and including its HTTP requests.

The exports are written by the export's own save functions (export.save_full / save_lora), from
the tiny Llama's weights and random adapters, without a training run (test_export.py checks the
weights an export holds). The training text they are checked against is prepare's ledger of the
embedded sample: each kept row's messages and the token ids the trainer trained on.

Push: huggingface_hub's HfApi talks to a recording HTTP server on loopback that answers the
Hub's repo-creation, pre-upload and commit calls (every file "regular", i.e. inline in the
commit). That checks what would reach the Hub, file by file, which an unreachable endpoint would
not; a test also checks the one-line error an unreachable endpoint gives.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
import torch
from safetensors.torch import load_file

from med42_ray import hub_files, model_card
from med42_ray.cli import main
from med42_ray.config import load_config
from med42_ray.data.template import Tokenise, med42_generation_prompt, training_text
from med42_ray.errors import RunError
from med42_ray.layout import (
    EXPORT_ADAPTER,
    EXPORT_MERGED,
    EXPORT_MODEL,
    PreparedDir,
    TrainDir,
)
from med42_ray.model import resolve_model
from med42_ray.train import export, strategies
from med42_ray.train.trainer import count_rows, plan_job, read_manifest

REPO = Path(__file__).resolve().parents[1]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _load(directory: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for f in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    return weights


@pytest.fixture(scope="module")
def kept_rows(sample_prepared) -> list[dict]:
    """Prepare's kept rows: the messages and the token ids the trainer trains on."""
    ledger = pads.dataset(str(sample_prepared[0] / "ledger"), format="parquet").to_table(
        columns=["status", "messages", "input_ids"])
    rows = ledger.filter(pc.equal(ledger["status"], "kept")).to_pylist()
    assert len(rows) > 1000
    return [{"messages": json.loads(r["messages"]), "input_ids": r["input_ids"]} for r in rows]


@pytest.fixture(scope="module")
def run(sample_prepared, tmp_path_factory):
    """A run dir with both strategies exported by the export's own functions: (run_dir, manifest, cfgs)."""
    prepared, _ = sample_prepared
    run_dir = tmp_path_factory.mktemp("hub_run")
    manifest, shards = read_manifest(PreparedDir(prepared))
    cfgs = {}
    for strategy in ("full", "lora"):
        cfg = load_config(None, [f"run_dir={run_dir}", f"train.data_dir={prepared}", f"train.strategy={strategy}",
                                 "train.export_max_shard_size=1MB"])
        job = plan_job(cfg, manifest, count_rows(shards))
        provenance = export.Provenance.of(cfg.train, job, manifest)
        weights = _weights(cfg)
        save = export.save_full if strategy == "full" else export.save_lora
        save(weights, cfg.train, resolve_model(cfg.model), job.outputs, provenance)
        cfgs[strategy] = cfg
    return run_dir, manifest, cfgs


def _weights(cfg) -> dict[str, torch.Tensor]:
    """Full: the tiny Llama's weights, changed; LoRA: random adapters (both nonzero, so a merge shows)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model))
    if cfg.train.strategy == "full":
        return {k: v + 0.01 * torch.randn_like(v) for k, v in base.state_dict().items()}
    model = strategies.wrap_lora(cfg.train, base)
    return {n: 0.05 * torch.randn_like(p) for n, p in model.named_parameters() if p.requires_grad}


def _exports(run) -> dict[str, Path]:
    run_dir, _, cfgs = run
    return {name: path for cfg in cfgs.values()
            for name, path in TrainDir(run_dir / "train" / cfg.train.strategy).exported(cfg.train.strategy).items()}


# -- the chat template ------------------------------------------------------------------------------

def test_exported_template_renders_exactly_what_training_trained_on(run, kept_rows):
    """Every export's tokenizer.apply_chat_template gives each kept row's training text, and the
    very token ids in prepare's ledger (med42 template, default system prompt added)."""
    from transformers import AutoTokenizer

    _, manifest, _ = run
    system_prompt = manifest["config"]["prepare"]["system_prompt"]
    assert manifest["template"] == "med42" and system_prompt
    trainer = Tokenise(AutoTokenizer.from_pretrained(manifest["tokenizer"]), "med42", system_prompt)
    with_system = sum(any(m["role"] == "system" for m in r["messages"]) for r in kept_rows)
    multi_turn = sum(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in kept_rows)
    assert with_system and multi_turn and with_system < len(kept_rows)  # both kinds are covered
    for name, path in _exports(run).items():
        tok = AutoTokenizer.from_pretrained(path)
        for r in kept_rows:
            text = tok.apply_chat_template(r["messages"], tokenize=False)
            assert text == training_text(r["messages"], trainer), name
            assert tok.apply_chat_template(r["messages"], return_dict=True)["input_ids"] == r["input_ids"], name
        # the evaluator's med42_chat prompt: the conversation up to the next answer
        prompt = kept_rows[0]["messages"][:-1]
        assert tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == \
            tok.bos_token + med42_generation_prompt(prompt, system_prompt, tok.eos_token)


def test_tokenizer_template_with_default_system_prompt(tmp_path, kept_rows, tiny_tokenizer):
    """prepare.template=tokenizer: the exported template is the tokenizer's own (here ChatML, with a
    leading newline and indented blocks that Jinja's whitespace rules would touch at a seam) with
    the default system prompt put in, rendering as the trainer's Tokenise does."""
    from transformers import AutoTokenizer

    tiny_tokenizer.save_pretrained(tmp_path / "chatml")
    base = AutoTokenizer.from_pretrained(tmp_path / "chatml")
    base.chat_template = "\n  {% if true %}" + CHATML + "{% endif %}"
    base.save_pretrained(tmp_path / "chatml")
    system_prompt = 'Be "careful" {{ here }}.\nSecond line.'
    saved = hub_files.save_tokenizer(tmp_path / "out", str(tmp_path / "chatml"), "tokenizer", system_prompt)
    trainer = Tokenise(AutoTokenizer.from_pretrained(tmp_path / "chatml"), "tokenizer", system_prompt)
    for r in kept_rows:
        assert saved.apply_chat_template(r["messages"], tokenize=False) == training_text(r["messages"], trainer)
    text = saved.apply_chat_template(kept_rows[0]["messages"], tokenize=False)
    assert text.startswith(f"\n<|im_start|>system\n{system_prompt}<|im_end|>")


def test_tokenizer_template_that_refuses_system_messages(tmp_path, kept_rows, tiny_tokenizer):
    """No system prompt and a template that raises on a system message (as some models' do): the
    rows without one are what training rendered, and the export reproduces them."""
    from transformers import AutoTokenizer

    tiny_tokenizer.save_pretrained(tmp_path / "nosys")
    base = AutoTokenizer.from_pretrained(tmp_path / "nosys")
    base.chat_template = ("{% if messages | selectattr('role', 'equalto', 'system') | list %}"
                          "{{ raise_exception('no system messages') }}{% endif %}" + CHATML)
    base.save_pretrained(tmp_path / "nosys")
    saved = hub_files.save_tokenizer(tmp_path / "out", str(tmp_path / "nosys"), "tokenizer", None)
    trainer = Tokenise(AutoTokenizer.from_pretrained(tmp_path / "nosys"), "tokenizer", None)
    rows = [r for r in kept_rows if not any(m["role"] == "system" for m in r["messages"])]
    for r in rows:
        assert saved.apply_chat_template(r["messages"], tokenize=False) == training_text(r["messages"], trainer)


def test_export_refuses_a_template_that_does_not_render_training(tmp_path, tiny_model_dir):
    """The export's own check: a template that renders other text than training fails the export."""
    from transformers import AutoTokenizer

    saved = hub_files.save_tokenizer(tmp_path, tiny_model_dir, "med42", "Prompt A")
    with pytest.raises(hub_files.ExportError, match="renders"):
        hub_files.check_template(saved, Tokenise(AutoTokenizer.from_pretrained(tiny_model_dir), "med42", "Prompt B"))


# -- generation config, card -------------------------------------------------------------------------

def test_every_export_carries_generation_config_and_a_card(run):
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer, GenerationConfig

    _, manifest, cfgs = run
    exports = _exports(run)
    assert set(exports) == {EXPORT_MODEL, EXPORT_ADAPTER, EXPORT_MERGED}
    for name, path in exports.items():
        tok = AutoTokenizer.from_pretrained(path)
        if name != EXPORT_ADAPTER:
            gen = GenerationConfig.from_pretrained(path)
            assert tok.eos_token_id in ([gen.eos_token_id] if isinstance(gen.eos_token_id, int) else gen.eos_token_id)
        card = ModelCard.load(path / "README.md")
        assert card.data.library_name == ("peft" if name == EXPORT_ADAPTER else "transformers")
        assert card.data.eval_results is None  # not evaluated yet
        facts = model_card.read_facts(path)
        assert facts["export"] == name and facts["base_model"] == cfgs["full"].model
        for source, s in manifest["sources"].items():
            assert facts["data"]["sources"][source]["kept"] == s["kept"]
            assert f"| {source} | {s['format']} |" in card.text
        removed = facts["decontamination"]["rows_removed"]
        assert sum(removed.values()) == sum(sum(s["contaminated"].values()) for s in manifest["sources"].values()) > 0
        for benchmark, n in removed.items():
            assert f"| {benchmark} | {manifest['benchmarks']['items'][benchmark]} | {n} |" in card.text
        strategy = "lora" if name != EXPORT_MODEL else "full"
        h = facts["hyperparameters"]
        assert h["learning_rate"] == cfgs[strategy].train.resolved_lr() and h["strategy"] == strategy
        assert (h.get("adapters") or {}).get("r") == (cfgs[strategy].train.lora.r if strategy == "lora" else None)
        assert (h.get("adapters") or {}).get("method") == ("lora" if strategy == "lora" else None)


def test_card_model_index_holds_the_evaluation_of_that_export(run, ray_cluster):
    """An evaluation of the full export and one of base + adapter (as the pipeline runs them) become
    the model-index of model/, adapter/ and merged/, with the numbers of evaluate's results.json."""
    from huggingface_hub import ModelCard

    from med42_ray.eval.config import EvalModel
    from med42_ray.eval.run import run_evaluate

    run_dir, _, cfgs = run
    exports = _exports(run)
    evals = {"full": EvalModel(name="full", path=str(exports[EXPORT_MODEL])),
             "lora": EvalModel(name="lora", path=cfgs["lora"].model, adapter=str(exports[EXPORT_ADAPTER]))}
    summaries = {}
    for label, m in evals.items():
        cfg = load_config(None, [f"run_dir={run_dir}", "evaluate.limit=4", "evaluate.num_actors=1",
                                 "evaluate.benchmarks=[medqa_4options,pubmedqa]", "evaluate.progress=false"])
        cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={
            "models": [m], "output_dir": str(run_dir / "eval" / label), "compare_with": []})})
        summaries[label] = run_evaluate(cfg)["models"][label]
    for name, path in exports.items():
        model_card.write_card(path, name, [run_dir / "eval"], model_name="tiny-med42")
        card = ModelCard.load(path / "README.md")
        want = summaries["full" if name == EXPORT_MODEL else "lora"]["benchmarks"]
        got = {r.dataset_name: r.metric_value for r in card.data.eval_results}
        assert got == {b: m["acc"] for b, m in want.items()}
        assert card.data.model_name == "tiny-med42"
        assert "model-index" in card.content and "| medqa_4options | harness |" in card.text


# -- merge -------------------------------------------------------------------------------------------

def test_export_merged_false_writes_the_adapter_alone_and_merge_makes_the_same_merged(run, tmp_path):
    """train.export_merged=false: adapter/ only; `med42-ray merge` then writes what the export's
    merged/ holds, tensor for tensor, with the same Hub files."""
    _, manifest, cfgs = run
    cfg = load_config(None, [f"run_dir={tmp_path}", f"train.data_dir={cfgs['lora'].train.data_dir}",
                             "train.strategy=lora", "train.export_merged=false", "train.export_max_shard_size=1MB"])
    job = plan_job(cfg, manifest, 100)
    export.save_lora(_weights(cfg), cfg.train, resolve_model(cfg.model), job.outputs,
                     export.Provenance.of(cfg.train, job, manifest))
    assert set(job.outputs.exported("lora")) == {EXPORT_ADAPTER}
    adapter, merged = job.outputs.export(EXPORT_ADAPTER), job.outputs.export(EXPORT_MERGED)
    assert main(["merge", str(adapter), "-o", "train.export_max_shard_size=1MB"]) == 0
    reference = _exports(run)[EXPORT_MERGED]  # the same seed: the same adapters
    got, want = _load(merged), _load(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert sorted(p.name for p in merged.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert (merged / "chat_template.jinja").read_text() == (reference / "chat_template.jinja").read_text()
    assert model_card.read_facts(merged)["export"] == EXPORT_MERGED


def test_merge_names_what_is_missing(tmp_path, capsys):
    assert main(["merge", str(tmp_path)]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err


# -- push --------------------------------------------------------------------------------------------

class _Hub(BaseHTTPRequestHandler):
    """The Hub's upload API as huggingface_hub calls it, recording each request."""

    requests: typing.ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append({"path": self.path, "body": body, "auth": self.headers.get("authorization")})
        if self.path == "/api/repos/create":
            repo = json.loads(body)
            return self._json({"url": f"http://{self.headers['host']}/{repo['organization']}/{repo['name']}"})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files]})
        if self.path == "/api/validate-yaml":  # the Hub checks a README's metadata before the commit
            return self._json({"errors": [], "warnings": []})
        if "/commit/" in self.path:  # /api/models/<owner>/<name>/commit/<revision>
            repo = "/".join(self.path.split("/")[3:5])
            return self._json({"commitUrl": f"http://{self.headers['host']}/{repo}/commit/{'1' * 40}",
                               "commitOid": "1" * 40})
        self._json({"error": f"unexpected {self.path}"}, 404)

    def _json(self, obj: dict, status: int = 200):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub():
    _Hub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Hub.requests
    server.shutdown()
    server.server_close()


def _committed_files(requests: list[dict]) -> dict[str, bytes]:
    commit = next(r for r in requests if "/commit/" in r["path"])
    lines = [json.loads(line) for line in commit["body"].decode().splitlines() if line.strip()]
    return {line["value"]["path"]: base64.b64decode(line["value"]["content"])
            for line in lines if line["key"] == "file"}


def test_push_uploads_the_export_with_its_card(run, hub, tmp_path):
    """`med42-ray push`, a process of its own with HF_ENDPOINT and HF_TOKEN: the repository is
    created, and the commit holds every file of the export, byte for byte, the card rewritten."""
    endpoint, requests = hub
    run_dir, _, _ = run
    model = _exports(run)[EXPORT_MODEL]
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": "hf_test_token", "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "med42_ray.cli", "push", str(model), "--repo-id", "me/tiny-med42",
                           "--run-dir", str(run_dir)], env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"pushed {model} to me/tiny-med42: {endpoint}/me/tiny-med42/commit/{'1' * 40}" in proc.stdout
    paths = [r["path"] for r in requests]
    assert paths[0] == "/api/repos/create" and json.loads(requests[0]["body"])["name"] == "tiny-med42"
    assert paths[-1] == "/api/models/me/tiny-med42/commit/main"
    assert all(r["auth"] == "Bearer hf_test_token" for r in requests)
    files = _committed_files(requests)
    assert files == {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    assert b"# tiny-med42" in files["README.md"]
    validated = next(json.loads(r["body"]) for r in requests if r["path"] == "/api/validate-yaml")
    assert validated["content"].encode() == files["README.md"]


def test_push_of_a_non_export_and_to_an_unreachable_hub_fail_in_one_line(run, tmp_path, capsys):
    endpoint = "http://127.0.0.1:9"  # the discard port: connection refused
    assert main(["push", str(tmp_path), "--repo-id", "me/x"]) == 2
    assert "med42_ray_training.json" in capsys.readouterr().err
    model = _exports(run)[EXPORT_MODEL]
    from med42_ray.hub import push

    with pytest.raises(RunError, match=r"push .* to http://127\.0\.0\.1:9/me/x failed: ConnectError"):
        push(model, "me/x", [], endpoint=endpoint)
