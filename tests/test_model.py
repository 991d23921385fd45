"""The embedded tiny Llama: deterministic build, HF loading, Med42 chat template, atomic cache."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from med42_ray.model import resolve_model
from med42_ray.model.tiny import SAMPLE_DIR, build_tiny_llama


def test_other_names_pass_through_unchanged():
    assert resolve_model("meta-llama/Llama-2-70b-hf") == "meta-llama/Llama-2-70b-hf"
    assert resolve_model("/some/local/dir") == "/some/local/dir"


def test_tiny_llama_loads_like_a_hub_llama(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    d = Path(tiny_model_dir)
    assert d.name.startswith("tiny-llama-") and (d / "model.safetensors").is_file()
    assert not list(d.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    assert isinstance(model, LlamaForCausalLM)
    assert 500_000 < sum(p.numel() for p in model.parameters()) < 20_000_000
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    assert len(tok) <= model.config.vocab_size
    assert tok("chest pain").input_ids[0] == tok.bos_token_id  # BOS like Llama-2, no EOS
    assert tok("chest pain").input_ids[-1] != tok.eos_token_id
    assert tok.decode(tok("The patient has a fever.", add_special_tokens=False).input_ids) == "The patient has a fever."

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Define fever."},
            {"role": "assistant", "content": "A raised body temperature."}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<s><|system|>: Be brief.\n<|prompter|>:Define fever.\n<|assistant|>:A raised body temperature.</s>")
    assert tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<|prompter|>:Define fever.\n<|assistant|>:")
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    answer = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(answer) == "A raised body temperature.</s>"

    out = model.generate(torch.tensor([tok("Fever is").input_ids]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, len(tok("Fever is").input_ids) + 4)


def _build(root: str) -> str:
    return str(build_tiny_llama(root=Path(root)))


def test_build_is_deterministic_and_concurrent_builds_do_not_race(tiny_model_dir, tmp_path):
    # Two processes build into the same empty cache at once: one wins the rename, both get it.
    with mp.get_context("spawn").Pool(2) as pool:
        a, b = pool.map(_build, [str(tmp_path)] * 2)
    assert a == b
    assert [p.name for p in tmp_path.iterdir()] == [Path(a).name]  # no temporary directory left behind
    # Same inputs, built in another process and place: byte-identical files, same directory name.
    assert Path(a).name == Path(tiny_model_dir).name
    for f in Path(tiny_model_dir).iterdir():
        assert (Path(a) / f.name).read_bytes() == f.read_bytes(), f.name


def test_missing_sample_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .*json.* files under"):
        build_tiny_llama(sample_dir=tmp_path / "nothing", root=tmp_path)


def test_presets_are_the_published_llama2_configs():
    from med42_ray.model.presets import load_model_config, preset_names

    assert preset_names() == ["llama-2-13b", "llama-2-70b", "llama-2-7b"]
    c = load_model_config("meta-llama/Llama-2-70b-hf")
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.vocab_size) == (8192, 28672, 80, 64, 8, 32000)
    assert SAMPLE_DIR.is_dir()
