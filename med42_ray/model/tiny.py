"""The embedded default model: a tiny Llama with a tokenizer trained here, in Hugging Face format.

`resolve_model("tiny-llama")` returns a local directory that loads with
`AutoTokenizer.from_pretrained` / `AutoModelForCausalLM.from_pretrained`, exactly like
`meta-llama/Llama-2-70b-hf` would, so every code path runs offline on a laptop.

Build is deterministic: the tokenizer is a byte-level BPE trained with `tokenizers` on the text of
the packaged sample data (files read in sorted order), the weights are a seeded random init. The
directory name carries a hash of every input (spec, library versions, sample files), so every Ray
worker, on any node, resolves the same name to byte-identical files, and a change in the sample
data gives a new directory instead of a stale one. The build goes to a temporary directory that is
renamed into place, so concurrent workers never see a half-written model.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from med42_ray.cache import cache_root
from med42_ray.data.template import MED42_CHAT_TEMPLATE, MED42_MARKERS

TINY_LLAMA = "tiny-llama"
# The tokenizer learns from the sample *training* mixture only, not the sample benchmark.
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample" / "data" / "train"
TEXT_SUFFIXES = (".json", ".jsonl", ".csv")

# Bump when the build recipe changes in a way the spec below does not capture.
BUILD_VERSION = 1

# Llama-2's architecture, scaled down to about a million parameters.
MODEL_SPEC = {
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "init_seed": 0,
}
# A small vocabulary on purpose: a 4096-token BPE learnt on the (mostly medical) sample gives each
# medical term a token of its own that the general-domain pre-training never trains, so the base
# cannot emit it and LoRA, which freezes the embeddings, cannot learn to; at 512 tokens 95% of the
# medical answers' tokens also occur in general text (measured on the sample, 2026-11-30).
TOKENIZER_SPEC = {"vocab_size": 512, "min_frequency": 2}

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
# Med42's turn markers; kept whole as (non-special) added tokens so they survive decoding.
CHAT_MARKERS = list(MED42_MARKERS)
# Med42's template, rendering exactly what `prepare.template=med42` trains on. The BOS comes from
# the template (as in Llama-2's own chat template), so render with add_special_tokens=False.
CHAT_TEMPLATE = MED42_CHAT_TEMPLATE


def resolve_model(name_or_path: str) -> str:
    """'tiny-llama' -> the local directory of the embedded model (built on first use);
    any other string (a HF id or a local path) is returned unchanged."""
    if name_or_path == TINY_LLAMA:
        return str(build_tiny_llama())
    return name_or_path


def build_tiny_llama(sample_dir: Path = SAMPLE_DIR, root: Path | None = None) -> Path:
    """Build (once) and return the tiny Llama's directory under the cache."""
    files = _text_files(sample_dir)
    if not files:
        raise FileNotFoundError(
            f"cannot build {TINY_LLAMA!r}: no {'/'.join(TEXT_SUFFIXES)} files under {sample_dir}; "
            "its tokenizer is trained on the packaged sample data (med42_ray/sample/data), so the "
            "package is incomplete. Reinstall med42-ray, or pass --model <HF id or directory>."
        )
    root = root or cache_root()
    target = root / f"{TINY_LLAMA}-{_inputs_hash(sample_dir, files)}"
    if (target / "config.json").is_file():
        return target

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        _write_model(tmp, _corpus(files))
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        try:
            os.rename(tmp, target)  # atomic: readers see nothing or the whole model
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _text_files(sample_dir: Path) -> list[Path]:
    if not sample_dir.is_dir():
        return []
    return sorted(p for p in sample_dir.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)


def _inputs_hash(sample_dir: Path, files: list[Path]) -> str:
    import tokenizers
    import torch
    import transformers

    h = hashlib.sha256()
    spec = {"build": BUILD_VERSION, "model": MODEL_SPEC, "tokenizer": TOKENIZER_SPEC,
            "markers": CHAT_MARKERS, "template": CHAT_TEMPLATE,
            "versions": [tokenizers.__version__, transformers.__version__, torch.__version__]}
    h.update(json.dumps(spec, sort_keys=True).encode())
    for f in files:
        h.update(f.relative_to(sample_dir).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _is_json_lines(text: str) -> bool:
    try:
        json.loads(text)
        return False
    except json.JSONDecodeError as e:
        return e.msg == "Extra data"


def _corpus(files: list[Path]) -> Iterator[str]:
    """Every string value in the sample files, in a fixed order (BPE merges depend on it)."""
    for f in files:
        try:
            text = f.read_text(encoding="utf-8") if f.suffix != ".csv" else ""
            if f.suffix == ".json" and text.lstrip()[:1] in ("[", "{") and not _is_json_lines(text):
                yield from _strings(json.loads(text))
            elif f.suffix in (".json", ".jsonl"):  # some ".json" files are JSON lines (MedMCQA's)
                for line in text.splitlines():
                    if line.strip():
                        yield from _strings(json.loads(line))
            else:
                with f.open(newline="", encoding="utf-8") as fh:
                    for row in csv.reader(fh):
                        yield from _strings(row)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read training text from {f}: {e}") from e


def _write_model(out: Path, corpus: Iterator[str]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(corpus)
    tokenizer.save_pretrained(out)
    spec = dict(MODEL_SPEC)
    seed = spec.pop("init_seed")
    config = LlamaConfig(
        vocab_size=_round_up(len(tokenizer), 64),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)


def _train_tokenizer(corpus: Iterator[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AddedToken, PreTrainedTokenizerFast

    specials = [UNK, BOS, EOS, PAD]
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SPEC["vocab_size"], min_frequency=TOKENIZER_SPEC["min_frequency"],
        special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Like Llama-2: a BOS in front, no EOS (the chat template closes answers with </s>).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=MODEL_SPEC["max_position_embeddings"], padding_side="right",
    )
    fast.add_tokens([AddedToken(m, special=False, normalized=False) for m in CHAT_MARKERS])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
