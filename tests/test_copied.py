"""Copied fields: learned from the teacher's answers, and a student answer with an invented value deferred."""

from __future__ import annotations

import json
from typing import Any

from insource.evals.generative import Generated, confidence
from insource.routing.copied import holds_copies, learn, prompt_text


def _answer(intent: str, **slots: str) -> str:
    return json.dumps({"intent": intent, "slots": slots})


def _examples(n: int = 30) -> list[tuple[str, str]]:
    return [
        (f"play track {i} by Artist {i}", _answer("PlayMusic", track=f"track {i}", artist=f"Artist {i}"))
        for i in range(n)
    ]


def test_learns_which_fields_are_copied() -> None:
    rule = learn(_examples())
    assert rule == {"fields": ["slots"], "match": "exact", "share": {"slots": 1.0}}  # the intent is a label


def test_too_few_values_or_a_teacher_that_rewrites_learn_nothing() -> None:
    assert learn(_examples(5)) is None  # 10 slot values: below MIN_VALUES
    rewritten = [(p, a.replace("Artist", "ARTIST-X")) for p, a in _examples()]  # half the values not in the prompt
    assert learn(rewritten) is None
    assert learn([("q", "not json")] * 40) is None


def test_case_folding_only_when_the_teacher_needs_it() -> None:
    lowered = [(p.lower(), a) for p, a in _examples()]
    rule = learn(lowered)
    assert rule is not None and rule["match"] == "casefold"
    assert holds_copies(_answer("PlayMusic", artist="ARTIST 3"), "play artist 3", rule)
    exact = learn(_examples())
    assert not holds_copies(_answer("PlayMusic", artist="ARTIST 3"), "play Artist 3", exact)


def test_an_invented_value_is_deferred() -> None:
    rule = learn(_examples())
    prompt = prompt_text([{"role": "system", "content": "Extract."}, {"role": "user", "content": "play  Hey Jude"}])
    assert holds_copies(_answer("AnyIntent", song="Hey Jude"), prompt, rule)  # whitespace runs count as one
    assert not holds_copies(_answer("PlayMusic", song="Hey Judy"), prompt, rule)
    assert holds_copies("not json", prompt, rule)  # the parse check decides that one
    assert holds_copies(_answer("PlayMusic", song="Hey Judy"), prompt, None)
    right = Generated(_answer("PlayMusic", song="Hey Jude"), -0.01, "stop", 0.0, 0.0)
    wrong = Generated(_answer("PlayMusic", song="Hey Judy"), -0.01, "stop", 0.0, 0.0)
    assert confidence(right, "json", prompt, rule) > 0.98
    assert confidence(wrong, "json", prompt, rule) == 0.0
    assert confidence(wrong, "json", prompt, None) > 0.98


def test_the_served_student_defers_an_invented_value() -> None:
    from insource.service.generative import _read_answer

    rule = learn(_examples())
    prompt = "play Hey Jude"

    def reply(text: str) -> dict[str, Any]:
        lps = [{"token": "x", "logprob": -0.01}]
        return {"choices": [{"message": {"content": text}, "finish_reason": "stop", "logprobs": {"content": lps}}]}

    _, conf, usable, _ = _read_answer(reply(_answer("PlayMusic", song="Hey Jude")), True, "json", (prompt, rule, None))
    assert usable and conf > 0.98
    _, conf, usable, _ = _read_answer(reply(_answer("PlayMusic", song="Hey Judy")), True, "json", (prompt, rule, None))
    assert not usable and conf == 0.0
    assert _read_answer(reply(_answer("PlayMusic", song="Hey Judy")), True, "json")[2]  # no rule recorded
