"""Answer shape: the keys and labels of the teacher's JSON answers, learned at distill; a student answer that
uses a key or label the teacher never answers with (for its label) is deferred, in eval and when served."""

from __future__ import annotations

import json
from typing import Any

from insource.distill.card import shape_summary
from insource.evals.generative import Generated, confidence
from insource.routing.copied import json_servable
from insource.routing.shape import fits, learn

SLOTS = {"PlayMusic": ("artist", "track"), "AddToPlaylist": ("playlist", "artist"), "GetWeather": ("city",)}


def _answer(intent: str, **slots: Any) -> str:
    return json.dumps({"intent": intent, "slots": slots})


def _answers(per_intent: int = 12) -> list[str]:
    out = []
    for intent, names in SLOTS.items():
        for i in range(per_intent):
            out.append(_answer(intent, **{name: f"{name} {i}" for name in names[: 1 + i % len(names)]}))
    return out


def test_learns_the_keys_the_labels_and_the_nested_keys_per_label() -> None:
    rule = learn(_answers())
    assert rule is not None
    assert rule["keys"] == ["intent", "slots"]
    assert rule["labels"] == {"intent": sorted(SLOTS)}
    assert rule["nested"]["slots"]["keys"] == ["artist", "city", "playlist", "track"]
    assert rule["nested"]["slots"]["by"]["intent"] == {
        "AddToPlaylist": ["artist", "playlist"],
        "GetWeather": ["city"],
        "PlayMusic": ["artist", "track"],
    }
    assert shape_summary(rule) == "keys intent, slots; intent: 3 labels; slots: 4 keys (by intent)"
    assert shape_summary(None) == "none"


def test_every_teacher_answer_fits_its_own_shape() -> None:
    answers = _answers()
    rule = learn(answers)
    assert all(fits(a, rule) for a in answers)


def test_a_key_the_teacher_never_uses_with_that_label_does_not_fit() -> None:
    rule = learn(_answers())
    assert fits(_answer("AddToPlaylist", playlist="chill", artist="Nina"), rule)
    assert fits(_answer("AddToPlaylist"), rule)  # a missing slot: the metric judges it, not the shape
    assert not fits(_answer("AddToPlaylist", track="chill"), rule)  # a PlayMusic slot in an AddToPlaylist answer
    assert not fits(_answer("GetWeather", country="France"), rule)  # a key no answer ever had
    assert not fits(_answer("BookRestaurant", city="Paris"), rule)  # a label the teacher never answered
    assert not fits(json.dumps({"intent": "GetWeather", "slots": {}, "note": "x"}), rule)  # an unknown field
    assert not fits(json.dumps([{"intent": "GetWeather"}]), rule)  # not an object
    assert fits("not json", rule)  # the parse check decides that one
    assert fits(_answer("AddToPlaylist", track="chill"), None)  # models distilled before: no rule, no check


def test_free_text_and_rare_values_are_not_labels_and_rare_labels_do_not_condition() -> None:
    answers = [json.dumps({"order": f"A{i}", "kind": "refund" if i % 2 else "exchange"}) for i in range(30)]
    rule = learn(answers)
    assert rule is not None and rule["labels"] == {"kind": ["exchange", "refund"]}  # 30 order ids: not a label
    assert fits(json.dumps({"order": "Z99", "kind": "refund"}), rule)
    assert not fits(json.dumps({"order": "Z99", "kind": "complaint"}), rule)
    few = _answers(per_intent=12) + [_answer("RateBook", rating="5")] * 3  # a label seen 3 times: too few to condition
    rule = learn(few)
    assert rule is not None and "RateBook" not in rule["nested"]["slots"]["by"]["intent"]
    assert fits(_answer("RateBook", rating="4"), rule)
    assert fits(_answer("RateBook", track="4"), rule)  # not conditioned: only the keys seen overall count
    assert not fits(_answer("RateBook", stars="4"), rule)


def test_too_few_or_non_object_answers_learn_nothing() -> None:
    assert learn(_answers()[:15]) is None
    assert learn(["plain text answer"] * 40) is None
    assert learn([*_answers(), *["plain text"] * 10]) is None  # under 90% objects: not a JSON-object task


def test_eval_and_serving_defer_an_answer_that_does_not_fit() -> None:
    from insource.service.generative import _read_answer

    rule = learn(_answers())
    right = _answer("AddToPlaylist", playlist="chill")
    wrong = _answer("AddToPlaylist", track="chill")
    prompt = "add this to my chill playlist"
    assert json_servable(right, prompt, None, rule) and not json_servable(wrong, prompt, None, rule)
    sure = Generated(right, -0.01, "stop", 0.0, 0.0)
    assert confidence(sure, "json", prompt, None, rule) > 0.98
    assert confidence(Generated(wrong, -0.01, "stop", 0.0, 0.0), "json", prompt, None, rule) == 0.0

    def reply(text: str) -> dict[str, Any]:
        lps = [{"token": "x", "logprob": -0.01}]
        return {"choices": [{"message": {"content": text}, "finish_reason": "stop", "logprobs": {"content": lps}}]}

    _, conf, usable, _ = _read_answer(reply(right), True, "json", (prompt, None, rule))
    assert usable and conf > 0.98
    _, conf, usable, _ = _read_answer(reply(wrong), True, "json", (prompt, None, rule))
    assert not usable and conf == 0.0
    assert _read_answer(reply(wrong), True, "exact", (prompt, None, rule))[1] > 0.98  # other metrics: no JSON checks
