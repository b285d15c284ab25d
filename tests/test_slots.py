"""Template slot inference: constant boilerplate vs the varying input."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from insource.capture.slots import Template, infer_template
from insource.errors import NotReady

DATA = Path(__file__).parents[1].parent / "shared" / "data"
INPUTS = [
    "I am still waiting on my card?",
    "What can I do if my card still hasn't arrived after 2 weeks?",
    "I have been waiting over a week. Is the card still coming?",
    "Can I track my card while it is in the process of delivery?",
    "How do I know if I will get my card, or if it is lost?",
]


def chat(system: str | None, user: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    return [*msgs, {"role": "user", "content": user}]


def test_system_prompt_is_constant_and_user_message_is_the_input() -> None:
    prompts = [chat("Classify into: a, b, c.", text) for text in INPUTS]
    t = infer_template(prompts)
    assert [(c.index, c.role) for c in t.constant] == [(0, "system")] and t.slot == 1
    assert (t.prefix, t.suffix) == ("", "")
    assert [t.extract(p) for p in prompts] == INPUTS
    assert t.extract(chat("Classify into: a, b, c.", "  new message  ")) == "new message"


def test_fixed_prefix_and_suffix_inside_the_user_message() -> None:
    prompts = [chat(None, f"Classify the headline.\nQ: {text}\nA:") for text in INPUTS]
    t = infer_template(prompts)
    assert t.prefix == "Classify the headline.\nQ: " and t.suffix == "\nA:"
    assert [t.extract(p) for p in prompts] == INPUTS


def test_prefix_stops_at_a_boundary_not_inside_the_input() -> None:
    prompts = [chat("S", f"Message: I {text}") for text in ["want a card", "lost my pin", "need help now"]]
    t = infer_template(prompts)
    assert t.prefix == "Message: "  # the shared "I " belongs to the inputs
    assert t.extract(prompts[0]) == "I want a card"


def test_mismatch_falls_back_to_the_last_user_message() -> None:
    t = infer_template([chat("Classify into: a, b, c.", text) for text in INPUTS])
    other = [{"role": "system", "content": "another prompt"}, {"role": "user", "content": "hello there"}]
    assert t.extract(other) == "hello there"
    assert t.extract([{"role": "user", "content": [{"type": "text", "text": "part one"}]}]) == "part one"
    assert t.extract("not a list") == ""
    assert Template().extract(chat("x", "raw input")) == "raw input"


def test_variable_length_conversations_keep_leading_constants() -> None:
    prompts = []
    for i, text in enumerate(INPUTS * 2):
        history = [{"role": "user", "content": f"turn {k}"} for k in range(i % 3)]
        prompts.append([{"role": "system", "content": "S"}, *history, {"role": "user", "content": f"Text: {text}"}])
    t = infer_template(prompts)
    assert t.n_messages is None and t.slot is None and [c.text for c in t.constant] == ["S"]
    assert t.prefix == "Text: " and t.extract(prompts[4]) == INPUTS[4]


def test_serialisation_round_trip_and_validation() -> None:
    t = infer_template([chat(None, f"Q: {text}\nA:") for text in INPUTS])
    again = Template.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t
    with pytest.raises(NotReady):
        Template.from_dict({"version": 99})
    with pytest.raises(NotReady):
        Template.from_dict({"version": 1, "constant": [{"role": "system"}]})


@pytest.mark.skipif(not (DATA / "banking77" / "train.csv").exists(), reason="banking77 data not present")
def test_banking77_prompts_and_extract_speed() -> None:
    with (DATA / "banking77" / "train.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for _, r in zip(range(2000), csv.DictReader(fh), strict=False)]
    labels = json.loads((DATA / "banking77" / "categories.json").read_text())
    system = "Classify the message into one of:\n" + "\n".join(labels)
    prompts = [chat(system, f"Customer message: {r['text']}\nIntent:") for r in rows]
    t = infer_template(prompts)
    assert t.prefix == "Customer message: " and t.suffix == "\nIntent:" and t.conforming == len(rows)
    assert all(t.extract(p) == r["text"].strip() for p, r in zip(prompts, rows, strict=True))
    loops = 20_000
    start = time.perf_counter()
    for i in range(loops):
        t.extract(prompts[i % len(prompts)])
    per_call_us = (time.perf_counter() - start) / loops * 1e6
    assert per_call_us < 50, per_call_us
