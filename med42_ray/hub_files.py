"""What an exported model carries besides its weights, so it is usable on its own (and on the Hub):
the tokenizer that prepared its training data, with the chat template the model was trained with,
and a generation_config.json that stops where training's answers stopped.

The chat template: `prepare.template=med42` trains on Med42's rendering (data/template.py, whose
`MED42_CHAT_TEMPLATE` is the same rendering in Jinja), `tokenizer` on the tokenizer's own template;
either way, a conversation without a system message was trained with `prepare.system_prompt` in
front, which a chat template does not know. The exported template (data/template.py's
`trained_chat_template`) is the trained one with that default put in, so
`tokenizer.apply_chat_template(messages)` renders exactly the training text. The export checks so
on probe conversations before it saves, and fails rather than ship another one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from med42_ray.data.template import Tokenise, med42_generation_prompt, trained_chat_template, training_text

# Conversations the exported template must render as training did: with and without a system
# message, several turns, and text that Jinja or JSON would read as syntax.
PROBES = [
    [{"role": "user", "content": "What is the first-line treatment of anaphylaxis?"},
     {"role": "assistant", "content": "Intramuscular epinephrine."}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": 'Quote "{{ x }}" and {% raw %}\\n as text.\nSecond line.'},
     {"role": "assistant", "content": "Done: {{ x }} {% endraw %} é ✓"}],
    [{"role": "user", "content": "Quiz me."}, {"role": "assistant", "content": "Sure."},
     {"role": "user", "content": "Source of epinephrine?"}, {"role": "assistant", "content": "Adrenal medulla."}],
]


class ExportError(RuntimeError):
    """An export that would not reproduce training (its chat template, its files)."""


def check_template(exported: Any, tokenise: Tokenise) -> None:
    """Fail unless the exported tokenizer's chat template renders each probe as training did (and,
    under med42, each generation prompt as the evaluator's med42_chat protocol does). A probe the
    trainer cannot render (a tokenizer template that refuses system messages) is not one it trained on."""
    from jinja2 import TemplateError

    checked = 0
    for messages in PROBES:
        try:
            want = training_text(messages, tokenise)
        except (TemplateError, ValueError):
            continue
        got = exported.apply_chat_template(messages, tokenize=False)
        checked += 1
        if got != want:
            raise ExportError(f"the exported chat template renders {got!r}, but training rendered {want!r}")
        if tokenise.template == "med42":
            prompt = messages[:-1]
            got = exported.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            want = (tokenise.tokenizer.bos_token or "") + med42_generation_prompt(
                prompt, tokenise.system_prompt, tokenise.tokenizer.eos_token)
            if got != want:
                raise ExportError(f"the exported chat template's generation prompt is {got!r}, but the "
                                  f"evaluator asks with {want!r}")
    if not checked:
        raise ExportError("the training chat template renders none of the probe conversations")


def save_tokenizer(out: Path, tokenizer_path: str, template: str, system_prompt: str | None,
                   trust_remote_code: bool = False) -> Any:
    """Save the tokenizer that prepared the data to `out`, with the trained chat template, checked
    after a round trip through the saved files. Returns the saved tokenizer."""
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
    tokenise = Tokenise(base, template, system_prompt)  # the trainer's rendering (base is not changed)
    exported = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
    try:
        exported.chat_template = trained_chat_template(template, system_prompt, base)
    except ValueError as e:
        raise ExportError(str(e)) from None
    exported.save_pretrained(out)
    saved = AutoTokenizer.from_pretrained(out, trust_remote_code=trust_remote_code)
    check_template(saved, tokenise)
    return saved


def generation_config(model_path: str, model_config: Any, tokenizer: Any):
    """The base's generation settings (as from_pretrained reads them; from its config when it has
    none), stopping at the tokenizer's end-of-sequence token, which closed every trained answer."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model_path)
    except OSError:
        gen = GenerationConfig.from_model_config(model_config)
    eos = gen.eos_token_id
    stops = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    if gen.bos_token_id is None:
        gen.bos_token_id = tokenizer.bos_token_id
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return gen
