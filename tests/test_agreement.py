"""How a generative student's answer is judged against its teacher's (routing/agreement.py): pure rules."""

from __future__ import annotations

from insource.routing.agreement import agree, choose_metric, chrf, field_matches


def test_json_agreement_ignores_layout_key_order_and_string_padding() -> None:
    teacher = '{"order_id": "41190", "product": "headset", "urgent": false}'
    assert agree("json", '{ "urgent":false,"product":" headset ","order_id":"41190"}', teacher)
    assert agree("json", '```json\n{"order_id":"41190","product":"headset","urgent":false}\n```', teacher)
    assert not agree("json", '{"order_id": "41190", "product": "phone", "urgent": false}', teacher)
    assert not agree("json", '{"order_id": "41190", "product": "headset"', teacher)  # cut off: no parse
    assert not agree("label", '{ "urgent":false,"product":"headset","order_id":"41190"}', teacher)  # classifiers


def test_field_matches_name_each_field_of_the_teacher() -> None:
    teacher = '{"order_id": "1", "product": "phone", "urgent": true}'
    assert field_matches('{"order_id": "1", "product": "laptop"}', teacher) == {
        "order_id": True,
        "product": False,
        "urgent": False,
    }
    assert field_matches("not json", teacher) == {"order_id": False, "product": False, "urgent": False}


def test_exact_and_similarity() -> None:
    assert agree("exact", "  Your parcel ships Monday. ", "your parcel ships monday")
    assert not agree("exact", "Your parcel ships Tuesday", "Your parcel ships Monday")
    assert chrf("the parcel ships on Monday", "the parcel ships on Monday") == 1.0
    assert agree("similarity", "The parcel ships on Monday morning.", "The parcel ships on Monday.")
    assert not agree("similarity", "We cannot help with that.", "The parcel ships on Monday.")


def test_the_metric_is_chosen_from_the_teacher_answers() -> None:
    assert choose_metric(['{"a": 1}'] * 19 + ["oops"]) == "json"
    assert choose_metric(["billing", "refund please", "card lost"]) == "exact"
    assert choose_metric(["Thank you for writing to us, we will ship a replacement by Monday at the latest."] * 3) == (
        "similarity"
    )
