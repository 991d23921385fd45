"""Chat template and loss mask: only the assistant's answers (and their end token) are trained on.
Every rendering of Med42's template (trainer, evaluator, the tiny Llama's Jinja) is the same text."""

from __future__ import annotations

import pytest

from med42_ray.benchmarks import BenchmarkItem
from med42_ray.data.template import (
    IGNORE_INDEX,
    MED42_CHAT_TEMPLATE,
    MED42_SYSTEM_PROMPT,
    Tokenise,
    med42_generation_prompt,
    med42_segments,
    with_system_prompt,
)
from med42_ray.eval.prompts import build_request, med42_chat_text

CONVERSATION = [
    {"role": "user", "content": "Which class of drug is metoprolol?"},
    {"role": "assistant", "content": "A beta-1 selective adrenergic blocker."},
    {"role": "user", "content": "And its main use?"},
    {"role": "assistant", "content": "Hypertension, angina and rate control."},
]


def test_med42_template_text_matches_the_model_card():
    segs = med42_segments(CONVERSATION[:2], "You are helpful.", "</s>")
    text = "".join(t for t, _ in segs)
    assert text == ("<|system|>: You are helpful.\n<|prompter|>:Which class of drug is metoprolol?\n"
                    "<|assistant|>:A beta-1 selective adrenergic blocker.</s>")
    assert [t for t, trainable in segs if trainable] == ["A beta-1 selective adrenergic blocker.</s>"]


def test_a_system_message_in_the_record_wins_over_the_default():
    msgs = [{"role": "system", "content": "Be brief."}] + CONVERSATION[:2]
    assert "".join(t for t, _ in med42_segments(msgs, "default", "</s>")).startswith("<|system|>: Be brief.\n")


@pytest.mark.parametrize("template", ["med42", "tokenizer"])
def test_unmasked_labels_decode_to_exactly_the_answers(tiny_tokenizer, template):
    tok = Tokenise(tiny_tokenizer, template, "You are a helpful medical assistant.")
    input_ids, labels = tok(CONVERSATION)
    assert len(input_ids) == len(labels)
    # Group consecutive trainable positions into spans: one per assistant turn.
    spans, current = [], []
    for i, lab in zip(input_ids, labels):
        if lab == IGNORE_INDEX:
            if current:
                spans.append(current)
                current = []
        else:
            assert lab == i
            current.append(i)
    if current:
        spans.append(current)
    decoded = [tiny_tokenizer.decode(s, skip_special_tokens=True, clean_up_tokenization_spaces=False)
               for s in spans]
    assert decoded == [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    # every answer ends with the end-of-sequence token, trained on, so the model learns to stop
    assert all(s[-1] == tiny_tokenizer.eos_token_id for s in spans)
    # nothing of the prompts is trained on
    masked = tiny_tokenizer.decode([i for i, lab in zip(input_ids, labels) if lab == IGNORE_INDEX])
    assert "Which class of drug is metoprolol?" in masked and "beta-1" not in masked


OWN_SYSTEM = [{"role": "system", "content": "Answer as a cardiologist."}]
# (messages, prepare.system_prompt): one and two turns, the default, the record's own, none;
# then shapes no reader makes but the renderings must still agree on.
CONVERSATIONS = {
    "one turn, default system": (CONVERSATION[:2], MED42_SYSTEM_PROMPT),
    "two turns, default system": (CONVERSATION, MED42_SYSTEM_PROMPT),
    "one turn, own system": (OWN_SYSTEM + CONVERSATION[:2], MED42_SYSTEM_PROMPT),
    "two turns, own system": (OWN_SYSTEM + CONVERSATION, MED42_SYSTEM_PROMPT),
    "one turn, no system": (CONVERSATION[:2], None),
    "two turns, no system": (CONVERSATION, None),
    "empty own system": ([{"role": "system", "content": ""}] + CONVERSATION[:2], MED42_SYSTEM_PROMPT),
    "two users, then answers twice": (CONVERSATION[:1] + CONVERSATION[2:3] + CONVERSATION[1:2] + CONVERSATION[3:],
                                      MED42_SYSTEM_PROMPT),
    "answer first": (CONVERSATION[1:], MED42_SYSTEM_PROMPT),  # (transformers renders no empty conversation)
}


def _trainer_text(tok, messages, system_prompt) -> str:
    # Tokenise puts the BOS in front as an id; the Jinja template writes it as text
    return tok.bos_token + "".join(t for t, _ in med42_segments(messages, system_prompt, tok.eos_token))


def _jinja_text(tok, messages, system_prompt, generation_prompt=False) -> str:
    return tok.apply_chat_template(with_system_prompt(messages, system_prompt), tokenize=False,
                                   add_generation_prompt=generation_prompt)


def test_the_tiny_llama_carries_the_med42_template(tiny_tokenizer):
    assert tiny_tokenizer.chat_template == MED42_CHAT_TEMPLATE


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_trainer_jinja_and_evaluator_render_the_same_text(tiny_tokenizer, name):
    tok = tiny_tokenizer
    messages, system_prompt = CONVERSATIONS[name]
    whole = _trainer_text(tok, messages, system_prompt)
    assert _jinja_text(tok, messages, system_prompt) == whole
    # the prompt for the last answer: everything the trainer puts before it
    last_answer = messages[-1]["content"] + tok.eos_token
    assert whole.endswith(last_answer)
    prompt = whole[: -len(last_answer)]
    assert _jinja_text(tok, messages[:-1], system_prompt, generation_prompt=True) == prompt
    assert tok.bos_token + med42_generation_prompt(messages[:-1], system_prompt, tok.eos_token) == prompt


def test_two_turn_text_is_the_model_card_format():
    assert med42_generation_prompt(CONVERSATION[:3], "Be brief.") == (
        "<|system|>: Be brief.\n<|prompter|>:Which class of drug is metoprolol?\n"
        "<|assistant|>:A beta-1 selective adrenergic blocker.</s>\n<|prompter|>:And its main use?\n<|assistant|>:")


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_jinja_assistant_mask_is_the_trained_text(tiny_tokenizer, name):
    messages, system_prompt = CONVERSATIONS[name]
    enc = tiny_tokenizer.apply_chat_template(with_system_prompt(messages, system_prompt), return_dict=True,
                                             return_assistant_tokens_mask=True)
    trained = [i for i, lab in zip(*Tokenise(tiny_tokenizer, "med42", system_prompt)(messages)) if lab != IGNORE_INDEX]
    assert [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m] == trained


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_tokenizer_template_tokenises_as_med42(tiny_tokenizer, name):
    messages, system_prompt = CONVERSATIONS[name]
    med42 = Tokenise(tiny_tokenizer, "med42", system_prompt)(messages)
    assert med42[0][0] == tiny_tokenizer.bos_token_id
    # the Jinja's "<s>" text is the BOS special token, so both start with the same id
    assert Tokenise(tiny_tokenizer, "tokenizer", system_prompt)(messages) == med42


@pytest.mark.parametrize("system_prompt", [MED42_SYSTEM_PROMPT, "Answer as a cardiologist.", None])
def test_med42_chat_prompt_is_the_training_prompt(tiny_tokenizer, system_prompt):
    item = BenchmarkItem("pubmedqa", "q1", "Does metoprolol lower heart rate?", ("yes", "no", "maybe"), 0,
                         context="Beta blockers were studied.")
    req = build_request(item, "med42_chat", system_prompt)
    body = "Beta blockers were studied.\n\nDoes metoprolol lower heart rate?\n\nA. yes\nB. no\nC. maybe"
    user = [{"role": "user", "content": body}]
    assert req.context == med42_chat_text(item, system_prompt)
    assert tiny_tokenizer.bos_token + req.context == _jinja_text(tiny_tokenizer, user, system_prompt, True)
    assert req.context.startswith("<|system|>: ") == (system_prompt is not None)
    # with the default system prompt, the evaluator's prompt is what it always was
    if system_prompt == MED42_SYSTEM_PROMPT:
        assert req.context == f"<|system|>: {MED42_SYSTEM_PROMPT}\n<|prompter|>:{body}\n<|assistant|>:"
