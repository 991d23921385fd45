"""Chat template and loss mask: only the assistant's answers (and their end token) are trained on."""

from __future__ import annotations

import pytest

from med42_ray.data.template import IGNORE_INDEX, Tokenise, med42_segments

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
