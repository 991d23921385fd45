"""Chat template and tokenisation with the loss masked to the assistant's answers.

A conversation is rendered as a list of segments `(text, trainable)`; each segment is tokenised
on its own and the label of a token is its id when trainable, -100 otherwise. Tokenising per
segment (as torchtune does per message) keeps the answer boundary exact: decoding the trainable
tokens gives back exactly the answers, whatever BPE would have merged across the boundary.

Med42's template (model card):  <|system|>: {system}\\n<|prompter|>:{prompt}\\n<|assistant|>:{answer}</s>
Further turns continue with "\\n<|prompter|>:..." after the end-of-sequence token.
"""

from __future__ import annotations

from typing import Any, Literal

IGNORE_INDEX = -100

Segment = tuple[str, bool]


def med42_segments(messages: list[dict], system_prompt: str | None, eos: str) -> list[Segment]:
    system = next((m["content"] for m in messages if m["role"] == "system"), system_prompt)
    segments: list[Segment] = []
    prefix = f"<|system|>: {system}\n" if system else ""
    for m in messages:
        if m["role"] == "user":
            prefix += f"<|prompter|>:{m['content']}\n<|assistant|>:"
        elif m["role"] == "assistant":
            segments += [(prefix, False), (m["content"] + eos, True)]
            prefix = "\n"
    return segments


def chat_template_segments(messages: list[dict], system_prompt: str | None, tokenizer: Any) -> list[Segment]:
    """Segments from the tokenizer's own chat template.

    Renders each prefix that ends before an assistant turn (with the generation prompt) and each
    prefix that ends after it; the text between the two is the answer. This works for any template
    whose rendering of a longer conversation extends that of a shorter one, and says so when not.
    """
    if not any(m["role"] == "system" for m in messages) and system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + messages

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
