"""Scoring equals lm-eval's per-choice computation; the Ray fan-out survives a killed actor; the CLI
writes every output. Models are tiny random Llamas with a tokenizer trained here (never downloaded)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from med42_ray.benchmarks import BenchmarkItem, load_benchmarks
from med42_ray.eval.prompts import build_request
from med42_ray.eval.scoring import Scorer, score_brute_force
from med42_ray.eval.workers import load_model

LETTER_TEXT = "Answer: A B C D E yes no maybe"
# Two ways of computing the same log-likelihood (batched vs one pair at a time, ours vs lm-eval's,
# an actor vs this process) run different matmul shapes, so each token's float32 log-prob may
# differ by a few ulps (about 1e-6 at |log p| ~ 8; at most 1e-6 per token measured here), and a
# choice's log-likelihood sums one such error per continuation token: a fixed atol fails on long
# answers (full_text: -326.6 over 51 tokens differed by 2.0e-5). 1e-5 per token still sits two
# orders of magnitude below a real mismatch: a token scored at the wrong position, a padding token
# attended to or a different model moves a choice by 1e-3 or more.
LOGPROB_ATOL_PER_TOKEN = 1e-5


def assert_loglikelihoods_close(got, expected, num_tokens, what) -> None:
    """Each summed log-likelihood within LOGPROB_ATOL_PER_TOKEN times its continuation's tokens."""
    assert len(got) == len(expected) == len(num_tokens), what
    for g, e, n in zip(got, expected, num_tokens):
        assert g == pytest.approx(e, abs=LOGPROB_ATOL_PER_TOKEN * n), what


def make_tiny_llama(path: Path, texts: list[str], max_positions: int = 2048) -> Path:
    """A 2-layer random Llama and a byte-level BPE trained on `texts` (Llama-style BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts + [LETTER_TEXT] * 50, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(path)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_positions,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def make_lora_adapter(base: Path, path: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(path)
    return path


def write_small_root(raw: Path, root: Path, n: int = 8) -> Path:
    """A benchmark root in the raw formats with the first `n` questions of a few benchmarks."""
    medqa = "medqa/US/4_options/phrases_no_exclude_test.jsonl"
    (root / medqa).parent.mkdir(parents=True)
    (root / medqa).write_text("".join((raw / medqa).read_text().splitlines(keepends=True)[:n]))
    mmlu = "mmlu/test/anatomy_test.csv"
    (root / mmlu).parent.mkdir(parents=True)
    with (raw / mmlu).open(newline="") as f, (root / mmlu).open("w", newline="") as g:
        csv.writer(g).writerows(list(csv.reader(f))[:n])
    (root / "pubmedqa").mkdir()
    truth = dict(list(json.loads((raw / "pubmedqa/test_ground_truth.json").read_text()).items())[:n // 2])
    pqal = json.loads((raw / "pubmedqa/ori_pqal.json").read_text())
    (root / "pubmedqa/test_ground_truth.json").write_text(json.dumps(truth))
    (root / "pubmedqa/ori_pqal.json").write_text(json.dumps({k: pqal[k] for k in truth}))
    head = json.loads((raw / "headqa/HEAD_EN/test_HEAD_EN.json").read_text())
    first = next(iter(head["exams"]))
    head["exams"] = {first: {**head["exams"][first], "data": head["exams"][first]["data"][:n]}}
    (root / "headqa/HEAD_EN").mkdir(parents=True)
    (root / "headqa/HEAD_EN/test_HEAD_EN.json").write_text(json.dumps(head))
    return root


@pytest.fixture(scope="module")
def small_root(raw_dir, tmp_path_factory) -> Path:
    return write_small_root(raw_dir, tmp_path_factory.mktemp("bench_root"))


@pytest.fixture(scope="module")
def items(small_root) -> list[BenchmarkItem]:
    return [it for v in load_benchmarks(small_root).values() for it in v]


@pytest.fixture(scope="module")
def tiny_dir(items, tmp_path_factory) -> Path:
    texts = [f"{it.context} {it.question} {' '.join(it.choices)}" for it in items]
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", texts)


@pytest.fixture(scope="module")
def scorer(tiny_dir) -> Scorer:
    torch.set_num_threads(1)  # the actors use one thread each: same arithmetic, same numbers
    tokenizer, model = load_model(str(tiny_dir), dtype="float32", device="cpu")
    return Scorer(model, tokenizer, max_batch_tokens=2048)


@pytest.mark.parametrize("protocol", ["harness", "med42_chat", "full_text"])
def test_batched_scores_equal_brute_force(scorer, items, protocol):
    requests = [build_request(it, protocol) for it in items]
    fast, brute = scorer.score(requests), score_brute_force(scorer, requests)
    for r, a, b in zip(requests, fast, brute):
        assert a.key == b.key == r.key
        assert_loglikelihoods_close(a.loglikelihoods, b.loglikelihoods, b.num_tokens, r.item_id)
        assert a.is_greedy == b.is_greedy and a.num_tokens == b.num_tokens
    methods = {s.method for s in fast}
    if protocol == "harness":  # letters are one token here: one pass; HEAD-QA texts: prefix cache
        assert methods == {"one_pass", "prefix_cache"}
        assert {s.method for s, r in zip(fast, requests) if r.benchmark == "mmlu_anatomy"} == {"one_pass"}


@pytest.mark.parametrize("protocol", ["harness", "full_text"])
def test_a_model_spread_by_a_device_map_scores_the_same(scorer, tiny_dir, items, protocol, tmp_path):
    """A 70B eval actor spreads the layers over its GPUs with accelerate's device map; the only split
    a CPU machine has is memory + disk offload: the hooks, the last hidden state and the KV cache then
    come from a dispatched model the way they do on several GPUs (bench/gpu_check splits cuda:0 and
    cpu for real)."""
    from transformers import AutoModelForCausalLM

    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.norm": "disk", "lm_head": "disk"}
    spread = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, device_map=device_map,
                                                  offload_folder=str(tmp_path))
    assert spread.lm_head.weight.device.type == "meta"  # its weights come from disk at each forward
    requests = [build_request(it, protocol) for it in items]
    got = Scorer(spread.eval(), scorer.tokenizer, max_batch_tokens=2048).score(requests)
    for r, a, b in zip(requests, got, scorer.score(requests)):
        assert_loglikelihoods_close(a.loglikelihoods, b.loglikelihoods, b.num_tokens, r.item_id)
        assert a.is_greedy == b.is_greedy and a.method == b.method
    assert {s.method for s in got} >= {"prefix_cache"}


def test_truncated_prompts_fall_back_to_lm_eval_recipe(tiny_dir, items):
    tokenizer, model = load_model(str(tiny_dir), dtype="float32", device="cpu")
    short = Scorer(model, tokenizer, max_length=64)  # every prompt is longer: left-truncated per choice
    requests = [build_request(it, "harness") for it in items[:4]]
    got = short.score(requests)
    assert {s.method for s in got} == {"brute_force"}
    pairs = [(e.context + c, c) for r in requests for e in [short.encode(r)] for c in e.continuations]
    ref = [sum(short.model(input_ids=torch.tensor([ids[-65:][:-1]])).logits[0, -len(c):]
               .log_softmax(-1)[torch.arange(len(c)), c].tolist()) for ids, c in pairs]
    assert_loglikelihoods_close([ll for s in got for ll in s.loglikelihoods], ref, [len(c) for _, c in pairs],
                                "truncated prompts")


def test_equal_prompts_are_scored_once(scorer, items):
    r = build_request(items[0], "harness")
    decoder = scorer.model.get_decoder()  # every scoring path runs through it
    calls = []
    forward = decoder.forward
    decoder.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        scorer.score([r])
        once = len(calls)
        a, b = scorer.score([r, r])
    finally:
        decoder.forward = forward
    assert a is b and once > 0 and len(calls) == 2 * once


def test_scores_match_lm_eval_hf_backend(scorer, items):
    """The numbers lm-eval itself computes for the same requests, with the same model object."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=scorer.model, tokenizer=scorer.tokenizer, batch_size=4, device="cpu")
    requests = [build_request(it, "harness") for it in items[::3]]
    instances = [Instance("loglikelihood", {}, (r.context, c), i) for r in requests for i, c in enumerate(r.continuations)]
    theirs = [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    ours = scorer.score(requests)
    assert_loglikelihoods_close([ll for s in ours for ll in s.loglikelihoods], theirs,
                                [n for s in ours for n in s.num_tokens], "ours vs lm-eval")


def _eval_config(tmp: Path, root: Path, models: list[dict], **evaluate):
    from med42_ray.config import load_config

    cfg = load_config(None, [f"run_dir={tmp}", f"evaluate.benchmarks_dir={root}", "evaluate.progress=false",
                             *(f"evaluate.{k}={v}" for k, v in evaluate.items())])
    cfg.evaluate.models = models
    return cfg


def test_killed_actor_still_yields_complete_identical_results(ray_cluster, tmp_path, small_root, items, tiny_dir,
                                                               scorer):
    """Two models (base and base + LoRA) in parallel groups; the base model's only actor is killed
    after its first task, with another task in flight: the task is retried, nothing lost or doubled."""
    import ray

    from med42_ray.eval.run import run_evaluate

    adapter = make_lora_adapter(tiny_dir, tmp_path / "adapter")
    cfg = _eval_config(tmp_path, small_root, [{"name": "base", "path": str(tiny_dir)},
                                              {"name": "lora", "path": str(tiny_dir), "adapter": str(adapter)}],
                       num_actors=1, questions_per_task=3)
    events = []

    def kill_first(ev):
        events.append(ev)
        if ev.model == "base" and not ev.retried and ev.done_tasks == 1:
            ray.kill(ev.actors[0], no_restart=False)  # Ray restarts it; its in-flight task fails

    summary = run_evaluate(cfg, on_event=kill_first)
    assert any(ev.retried and ev.model == "base" for ev in events), "the kill hit no task in flight"

    out = tmp_path / "eval"
    for bench, expected in (("medqa_4options", 8), ("mmlu_anatomy", 8), ("pubmedqa", 4), ("headqa_en", 8)):
        for model in ("base", "lora"):
            rows = [json.loads(l) for l in (out / model / "samples" / f"{bench}.jsonl").read_text().splitlines()]
            assert len(rows) == len({r["id"] for r in rows}) == expected
            assert summary["models"][model]["benchmarks"][bench]["n"] == expected
    # identical to scoring the same requests in this process
    by_id = {(it.benchmark, it.id): it for it in items}
    ref = {}
    for bench in ("medqa_4options", "headqa_en"):
        rows = [json.loads(l) for l in (out / "base" / "samples" / f"{bench}.jsonl").read_text().splitlines()]
        reqs = [build_request(by_id[(bench, r["id"])], "harness") for r in rows]
        for r, s in zip(rows, scorer.score(reqs)):
            assert_loglikelihoods_close(r["loglikelihoods"], s.loglikelihoods, s.num_tokens, r["id"])
            ref[r["id"]] = r["loglikelihoods"]
    lora_rows = [json.loads(l) for l in (out / "lora" / "samples" / "medqa_4options.jsonl").read_text().splitlines()]
    assert any(r["loglikelihoods"] != ref[r["id"]] for r in lora_rows), "the adapter changed nothing"
    table = (out / "comparison.md").read_text()
    assert "| benchmark | base | lora | Med42-70B (published) |" in table and "| medqa_4options |" in table
    assert (out / "comparison.png").stat().st_size > 10_000


def test_two_protocols_in_one_pass_equal_two_separate_runs(ray_cluster, tmp_path, small_root, tiny_dir):
    """full_text as the headline and harness beside it: one group of actors per model scores both,
    each distinct request once (harness and full_text ask PubMedQA alike), and each protocol's
    results equal a run of that protocol alone."""
    from med42_ray.eval.run import run_evaluate
    from med42_ray.layout import EvalDir

    def evaluate(out: str, protocol: str, *also: str):
        cfg = _eval_config(tmp_path / out, small_root, [{"name": "base", "path": str(tiny_dir)}], num_actors=1,
                           limit=3, benchmarks="[medqa_4options,pubmedqa]", protocol=protocol,
                           also_protocols=f"[{','.join(also)}]")
        events = []
        return run_evaluate(cfg, on_event=events.append), events, EvalDir(tmp_path / out / "eval")

    both, events, out = evaluate("both", "full_text", "harness")
    assert len({id(a) for ev in events for a in ev.actors}) == 1  # num_actors=1: one actor scored both
    alone = {p: evaluate(p, p)[0] for p in ("full_text", "harness")}
    assert both["protocols_in_pass"] == ["full_text", "harness"]
    assert alone["harness"]["protocols_in_pass"] == ["harness"]
    # 3 questions of each benchmark; medqa's requests differ by protocol (letters vs answer texts),
    # pubmedqa's are the same under both (its choices are texts in lm-eval too): scored once
    assert (alone["full_text"]["distinct_prompts"], alone["harness"]["distinct_prompts"]) == (6, 6)
    assert both["distinct_prompts"] == 9
    assert json.loads(out.summary.read_text()) == both and both["protocol"] == "full_text"
    harness = json.loads(out.protocol("harness").summary.read_text())
    assert harness["protocol"] == "harness" and not out.protocol("full_text").root.exists()
    for protocol, summary in (("full_text", both), ("harness", harness)):
        where = out if protocol == "full_text" else out.protocol(protocol)
        single = EvalDir(tmp_path / protocol / "eval")
        assert json.loads(where.model_results("base").read_text()) == summary["models"]["base"]
        for bench in ("medqa_4options", "pubmedqa"):
            got = [json.loads(ln) for ln in where.samples("base", bench).read_text().splitlines()]
            want = [json.loads(ln) for ln in single.samples("base", bench).read_text().splitlines()]
            assert [r["request_key"] for r in got] == [r["request_key"] for r in want] and len(got) == 3
            for g, w in zip(got, want):
                assert_loglikelihoods_close(g["loglikelihoods"], w["loglikelihoods"], w["num_tokens"], g["id"])
                assert (g["prediction"], g["acc"]) == (w["prediction"], w["acc"]), (protocol, g["id"])
            metrics = summary["models"]["base"]["benchmarks"][bench]
            assert metrics == alone[protocol]["models"]["base"]["benchmarks"][bench]
        assert f"protocol `{protocol}`" in where.comparison_md.read_text()


def test_cli_evaluates_every_benchmark_with_two_actors(ray_cluster, tmp_path, tiny_dir):
    """Acceptance on the embedded sample benchmarks (every benchmark it holds), 2 actors."""
    from med42_ray.benchmarks import BENCHMARKS
    from med42_ray.cli import main
    from med42_ray.paths import resolve_path

    root = resolve_path("pkg://sample/data/benchmarks")
    if not root.is_dir():
        pytest.skip("embedded sample benchmarks not built yet")
    rc = main(["evaluate", "--model", str(tiny_dir), "--num-actors", "2", "--run-dir", str(tmp_path),
               "-o", "evaluate.progress=false"])
    assert rc == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    loaded = load_benchmarks(root)
    (model,) = results["models"].values()
    assert set(model["benchmarks"]) == set(loaded)
    for name, its in loaded.items():
        got = model["benchmarks"][name]
        assert got["n"] + got["excluded"] == len(its) and got["excluded"] == sum(it.needs_image for it in its)
        assert got["canonical_size"] == BENCHMARKS[name].size
        assert len((tmp_path / "eval" / "model" / "samples" / f"{name}.jsonl").read_text().splitlines()) == got["n"]
    assert results["skipped_benchmarks"] == [n for n in BENCHMARKS if n not in loaded]


def test_metrics_follow_lm_eval():
    from med42_ray.eval import results as res
    from med42_ray.eval.scoring import Scored

    item = BenchmarkItem("headqa_en", "q1", "Which?", ("a", "bbbb"), 1)
    req = build_request(item, "harness")
    row = res.sample_row(item, req, Scored(req.key, [-2.0, -4.0], [True, False], [1, 3], "one_pass"))
    # acc: argmax of log-likelihoods; acc_norm: divided by the choice's length in characters
    assert (row["prediction"], row["prediction_norm"], row["acc"], row["acc_norm"]) == (0, 1, 0.0, 1.0)
    m = res.benchmark_metrics([{"acc": a, "acc_norm": a} for a in (1.0, 0.0, 1.0, 1.0)], excluded=2, canonical=6)
    assert m["acc"] == 0.75 and m["acc_stderr"] == pytest.approx(0.5 / 2) and m["excluded"] == 2
    agg = res.aggregate({f"mmlu_{s}": {"acc": a, "n": n} for s, a, n in
                         (("anatomy", 0.5, 10), ("clinical_knowledge", 1.0, 30))}, {})
    assert agg["mmlu_clinical"]["acc"] == 0.75 and agg["mmlu_clinical"]["acc_weighted_by_size"] == 0.875
