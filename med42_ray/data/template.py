"""Med42's chat template, defined once, and tokenisation with the loss masked to the answers.

Med42's format (model card):  <|system|>: {system}\\n<|prompter|>:{prompt}\\n<|assistant|>:{answer}</s>
Further turns continue with "\\n<|prompter|>:..." after the end-of-sequence token. The pieces
below are the only definition of it; every rendering derives from them:

- `med42_segments`: what the trainer trains on (`prepare.template=med42`);
- `med42_generation_prompt`: a conversation up to where the next answer begins (the evaluator's
  `med42_chat` prompts);
- `MED42_CHAT_TEMPLATE`: the same rendering as a Jinja chat template (the embedded tiny Llama's),
  so `tokenizer.apply_chat_template` renders exactly what the trainer trains on.

A conversation is rendered as a list of segments `(text, trainable)`; each segment is tokenised
on its own and the label of a token is its id when trainable, -100 otherwise. Tokenising per
segment (as torchtune does per message) keeps the answer boundary exact: decoding the trainable
tokens gives back exactly the answers, whatever BPE would have merged across the boundary.
"""

from __future__ import annotations

import json
from typing import Any, Literal

IGNORE_INDEX = -100

Segment = tuple[str, bool]

MED42_SYSTEM_PROMPT = "You are a helpful medical assistant created by M42 Health in the UAE."
# Med42's turn markers (a tokenizer for Med42 keeps them whole).
SYSTEM_MARKER, USER_MARKER, ASSISTANT_MARKER = "<|system|>", "<|prompter|>", "<|assistant|>"
MED42_MARKERS = (SYSTEM_MARKER, USER_MARKER, ASSISTANT_MARKER)
SYSTEM_OPEN = SYSTEM_MARKER + ": "  # the model card has a space after the system marker only
USER_OPEN = USER_MARKER + ":"
ANSWER_OPEN = ASSISTANT_MARKER + ":"  # the answer follows directly ("B. Cisplatin")
TURN_END = "\n"  # closes a system or user message
ANSWER_SEPARATOR = "\n"  # between an answer's end-of-sequence token and whatever follows
# Llama-2's end of sequence, as the model card writes it; the trainer uses its tokenizer's.
MED42_EOS = "</s>"


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """The messages with `system_prompt` as a first system message when they have none, the
    one default of every rendering here (a chat template knows no default system prompt)."""
    if any(m["role"] == "system" for m in messages) or not system_prompt:
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


def _med42_walk(messages: list[dict], system_prompt: str | None, eos: str) -> tuple[list[Segment], str]:
    """The answered turns as segments, and the text still pending after the last answer: what
    comes before the next one. The record's first system message wins over `system_prompt`;
    an empty one means no system turn."""
    systems = [m["content"] for m in with_system_prompt(messages, system_prompt) if m["role"] == "system"]
    system = systems[0] if systems else None
    segments: list[Segment] = []
    pending = f"{SYSTEM_OPEN}{system}{TURN_END}" if system else ""
    for m in messages:
        if m["role"] == "user":
            pending += f"{USER_OPEN}{m['content']}{TURN_END}{ANSWER_OPEN}"
        elif m["role"] == "assistant":
            segments += [(pending, False), (m["content"] + eos, True)]
            pending = ANSWER_SEPARATOR
    return segments, pending


def med42_segments(messages: list[dict], system_prompt: str | None, eos: str) -> list[Segment]:
    """The trainer's rendering: prompts (not trained on) and answers with their `eos` (trained on)."""
    return _med42_walk(messages, system_prompt, eos)[0]


def med42_generation_prompt(messages: list[dict], system_prompt: str | None, eos: str = MED42_EOS) -> str:
    """The conversation rendered as the trainer does, up to where the next answer begins (after
    "<|assistant|>:" when the last message is the user's). `eos` closes earlier answers."""
    segments, pending = _med42_walk(messages, system_prompt, eos)
    return "".join(text for text, _ in segments) + pending


def _jinja_text(text: str) -> str:
    # An expression rather than template text: HF renders with trim_blocks, which would drop a
    # newline that follows a block tag, and the text may hold Jinja syntax. JSON string escapes
    # are ones Jinja's string literals decode.
    return "{{ " + json.dumps(text) + " }}"


def _med42_jinja() -> str:
    """`_med42_walk` in Jinja: a BOS text first (Tokenise adds the BOS as an id instead); the
    first system message, or none (`chat_template_segments` adds the default system prompt); then
    each turn, with what precedes an answer emitted when the next message (or the generation
    prompt) shows whether it is the answer opening or the separator after an answer."""
    pending = (f"{{% if ns.last == 'user' %}}{_jinja_text(ANSWER_OPEN)}"
               f"{{% elif ns.last == 'assistant' %}}{_jinja_text(ANSWER_SEPARATOR)}{{% endif %}}")
    return (
        "{{ bos_token }}"
        "{% for message in messages if message['role'] == 'system' %}"
        "{% if loop.first and message['content'] %}"
        f"{_jinja_text(SYSTEM_OPEN)}{{{{ message['content'] }}}}{_jinja_text(TURN_END)}"
        "{% endif %}{% endfor %}"
        "{% set ns = namespace(last='') %}"
        "{% for message in messages if message['role'] != 'system' %}"
        f"{pending}"
        "{% if message['role'] == 'user' %}"
        f"{_jinja_text(USER_OPEN)}{{{{ message['content'] }}}}{_jinja_text(TURN_END)}"
        "{% elif message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
        "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}"
        "{% endif %}"
        "{% set ns.last = message['role'] %}"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{pending}{{% endif %}}"
    )


# {% generation %} marks the answers for `return_assistant_tokens_mask=True`.
MED42_CHAT_TEMPLATE = _med42_jinja()


def chat_template_segments(messages: list[dict], system_prompt: str | None, tokenizer: Any) -> list[Segment]:
    """Segments from the tokenizer's own chat template.

    Renders each prefix that ends before an assistant turn (with the generation prompt) and each
    prefix that ends after it; the text between the two is the answer. This works for any template
    whose rendering of a longer conversation extends that of a shorter one, and says so when not.
    """
    messages = with_system_prompt(messages, system_prompt)

    def render(msgs: list[dict], gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    segments: list[Segment] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, after = render(messages[:i], True), render(messages[: i + 1], False)
        if not before.startswith(done) or not after.startswith(before):
            raise ValueError("the tokenizer's chat template does not render conversations prefix by prefix; "
                             "use prepare.template=med42")
        segments += [(before[len(done):], False), (after[len(before):], True)]
        done = after
    return segments


class Tokenise:
    """Turns chat records into `input_ids` and `labels` (callable per record)."""

    def __init__(self, tokenizer: Any, template: Literal["med42", "tokenizer"], system_prompt: str | None):
        self.tokenizer = tokenizer
        self.template = template
        self.system_prompt = system_prompt
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has no end-of-sequence token; the answers could not be terminated")
        if template == "tokenizer" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("prepare.template=tokenizer but the tokenizer has no chat_template")

    def segments(self, messages: list[dict]) -> list[Segment]:
        if self.template == "med42":
            return med42_segments(messages, self.system_prompt, self.tokenizer.eos_token)
        return chat_template_segments(messages, self.system_prompt, self.tokenizer)

    def __call__(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        input_ids: list[int] = []
        labels: list[int] = []
        bos = self.tokenizer.bos_token_id
        if self.template == "med42" and bos is not None:
            input_ids.append(bos)
            labels.append(IGNORE_INDEX)
        for text, trainable in self.segments(messages):
            if not text:
                continue
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            input_ids += ids
            labels += ids if trainable else [IGNORE_INDEX] * len(ids)
        return input_ids, labels


# ---- what an export carries (hub_files.py): the template the model was trained with ----------

def default_system_prefix(system_prompt: str | None) -> str:
    """Jinja that puts `system_prompt` in front of `messages` when none is a system message, as
    data/template.with_system_prompt does for training. It ends with a newline that Jinja's
    trim_blocks (on in transformers) eats, so what follows is lexed as at the template's start."""
    if not system_prompt:
        return ""
    return ("{% if not (messages | selectattr('role', 'equalto', 'system') | list) %}"
            "{% set messages = [{'role': 'system', 'content': " + json.dumps(system_prompt) + "}] + messages %}"
            "{% endif %}\n")


def trained_chat_template(template: str, system_prompt: str | None, tokenizer: Any) -> str:
    """The chat template that renders what `prepare` trained on with `template` and `system_prompt`."""
    if template == "med42":
        base = MED42_CHAT_TEMPLATE
    else:
        base = getattr(tokenizer, "chat_template", None)
        if not isinstance(base, str) or not base:
            raise ValueError("prepare.template=tokenizer, but the tokenizer that prepared the data has no "
                              "single chat_template to export")
    return default_system_prefix(system_prompt) + base


def training_text(messages: list[dict], tokenise: Tokenise) -> str:
    """The text the trainer trains on for `messages` (its BOS, under med42, as text)."""
    bos = tokenise.tokenizer.bos_token if tokenise.template == "med42" else None
    return (bos or "") + "".join(text for text, _ in tokenise.segments(messages))
