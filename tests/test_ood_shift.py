"""A cascade keeps its promise when out-of-scope requests grow after the switch (issue 14).

The demo shop's intents, four of them out of scope: the teacher answers `other` for those. They are 3% of the
traffic the student learns from and 30% of the live traffic. Through a real `insource serve`, in cascade mode at
the threshold `insource eval` chose for 98% agreement: the student distilled today keeps the promise; the same
student as the previous release wrote it (its head.npz and model.json: best-similarity OOD rule, no catch-all)
breaks it, answering out-of-scope requests with in-scope labels. The second run also shows such entries still load.
With `--target-agreement` and live calibration the route also learns the catch-all's live share and the student
answers most out-of-scope requests `other` itself.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from tests.conftest import Gateway, start_gateway, stop_gateway

from insource.demo import data as demo_data
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

TASK = "shop-intent"
OUT_OF_SCOPE = {"change_address", "invoice_request", "speak_to_agent", "discount_code"}
TARGET = 0.98


def teacher_view(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(text, "other" if label in OUT_OF_SCOPE else label) for text, label in rows]


def mixed(rows: list[tuple[str, str]], share: float, n_inside: int) -> list[tuple[str, str]]:
    """`n_inside` in-scope requests and enough out-of-scope ones to make `share` of the whole."""
    inside = [r for r in rows if r[1] != "other"][:n_inside]
    outside = [r for r in rows if r[1] == "other"][: round(share / (1 - share) * n_inside)]
    both = inside + outside
    random.Random(0).shuffle(both)
    return both


async def replay(base_url: str, key: str, pairs: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(teacher's answer, answer served, served by) per request."""
    limit = asyncio.Semaphore(16)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=2) as client:

        async def one(text: str, gold: str) -> tuple[str, str, str]:
            async with limit:
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini",
                    messages=demo_data.build_messages(text),  # type: ignore[arg-type]
                    metadata={"task": TASK},
                )
                return gold, raw.parse().choices[0].message.content or "", raw.headers["x-insource-served-by"]

        return list(await asyncio.gather(*(one(t, g) for t, g in pairs)))


@dataclass
class Shift:
    gw: Gateway
    key: str
    folder: Path
    live: list[tuple[str, str]]

    def cli(self, *args: str) -> Any:
        return json.loads(self.gw.cli(*args, "--json").stdout)

    def evaluated(self, model: str) -> float:
        ev = self.cli(
            "eval", "--task", TASK, "--model", model, "--dataset", str(self.folder / "ds"), "--target-agreement", "0.98"
        )
        assert ev["threshold"] is not None
        return float(ev["threshold"])

    def previous_release_copy(self, model: str) -> str:
        """Register a copy of `model` (no retraining) as the previous release would have written it."""
        from insource.registry.entries import read_model_info, register

        source = self.folder / "models" / model

        def build(folder: Path) -> dict[str, Any]:
            for path in source.iterdir():
                if path.is_file() and path.name not in ("model.json", "eval.json", "card.md"):
                    shutil.copyfile(path, folder / path.name)
            return {k: v for k, v in read_model_info(source).items() if k not in ("name", "version", "files")}

        name, folder = register(self.folder / "models", TASK, build)
        as_previous_release(folder, self.folder / "ds")
        return name

    def cascade(self, model: str, threshold: float) -> dict[str, float]:
        self.gw.cli(
            "route", "set", "--task", TASK, "--model", model, "--mode", "cascade", "--threshold", str(threshold)
        )
        time.sleep(1.2)  # every worker applies a route within a second
        served = asyncio.run(replay(self.gw.base_url, self.key, self.live))
        student = [(gold, answer) for gold, answer, by in served if by == model]
        outside = [gold for gold, _, _ in served if gold == "other"]
        return {
            "insourced": len(student) / len(served),
            "agreement": sum(g == a for g, a in student) / max(1, len(student)),
            "oos_wrongly_insourced": sum(g == "other" and a != "other" for g, a in student) / len(outside),
        }


def as_previous_release(folder: Path, dataset: Path) -> None:
    """Rewrite a student's head as the previous release did: six scalars, OOD below the 0.5% validation quantile
    of the best cosine minus 0.03, no catch-all; model.json's head record and file sizes to match."""
    from insource.capture.dataset_read import load_dataset
    from insource.registry.encoder import OnnxEncoder
    from insource.registry.entries import MODEL_FILE, read_model_info, write_json_atomic

    with np.load(folder / "head.npz") as data:
        arrays = {name: data[name] for name in data.files}
    val_x = OnnxEncoder(folder).encode([ex.input for ex in load_dataset(dataset).split("val")])
    best = (val_x @ arrays["train_vectors"].astype(np.float32).T).max(axis=1)
    threshold = float(np.quantile(best, 0.005) - 0.03)
    scalars = arrays["scalars"][:6].copy()
    scalars[1] = threshold
    np.savez(folder / "head.npz", **{**arrays, "scalars": scalars})
    info = read_model_info(folder)
    info["head"] = {k: v for k, v in info["head"].items() if k not in ("ood", "catch_all")}
    info["head"]["ood_threshold"] = round(threshold, 4)
    info["files"]["head.npz"] = (folder / "head.npz").stat().st_size
    write_json_atomic(folder / MODEL_FILE, info)


@pytest.fixture(scope="module")
def shift(tmp_path_factory: pytest.TempPathFactory, encoder_cache: Path) -> Iterator[Shift]:
    folder = tmp_path_factory.mktemp("ood-shift")
    pool = teacher_view(demo_data.generate(4000, seed=21, ambiguous_share=0))
    train = mixed(pool[:3000], 0.03, 1200)
    seen = {text for text, _ in train}
    live = mixed(
        [r for r in teacher_view(demo_data.generate(2500, seed=22, ambiguous_share=0)) if r[0] not in seen], 0.3, 400
    )
    answers = dict(train) | dict(live)
    handle: ServerHandle = run_server(
        FakeUpstream(responder=lambda model, messages, body: answers[messages[-1]["content"]])
    )
    (folder / "insource.toml").write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[registry]\npath = "models"\n[providers.teacher]\nkind = "openai"\n'
        f'base_url = "{handle.url}/v1"\nterms = "self-hosted"\n'
        '[models."gpt-4o-mini"]\ntargets = ["teacher:gpt-4o-mini"]\n'
    )
    shutil.copytree(encoder_cache / "encoders", folder / "models" / ".cache" / "encoders")
    gw = start_gateway(folder / "insource.toml")
    key = gw.key("shift")["key"]
    asyncio.run(replay(gw.base_url, key, train))
    time.sleep(0.5)
    gw.cli("dataset", "build", "--task", TASK, "--out", str(folder / "ds"), "--json")
    yield Shift(gw, key, folder, live)
    stop_gateway(gw)
    handle.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def model(shift: Shift) -> str:
    """The student distilled on the shift's training traffic (once for the module)."""
    return str(shift.cli("distill", "--task", TASK, "--dataset", str(shift.folder / "ds"))["model"])


def test_the_new_scope_rules_keep_the_promise_the_old_ones_break(shift: Shift, model: str) -> None:
    threshold = shift.evaluated(model)
    shown = shift.cli("models", "show", model)
    assert shown["head"]["catch_all"]["label"] == "other" and shown["head"]["catch_all"]["reason"] == "name"
    assert shown["head"]["ood"]["k"] == 10
    new = shift.cascade(model, threshold)
    print("new scope rules:", new)
    assert new["agreement"] >= TARGET, new
    assert new["oos_wrongly_insourced"] <= 0.05, new
    assert new["insourced"] >= 0.6, new

    old_model = shift.previous_release_copy(model)
    old_threshold = shift.evaluated(old_model)
    assert shift.cli("models", "show", old_model)["status"] == "ok"  # an entry written by the old code loads
    old = shift.cascade(old_model, old_threshold)
    print("previous release's rules:", old)
    assert old["agreement"] < TARGET, old  # the promise broken...
    assert old["oos_wrongly_insourced"] > 0.05, old  # ...by out-of-scope requests answered in scope


def test_a_calibrating_cascade_learns_the_catch_alls_live_share(shift: Shift, model: str) -> None:
    """`--target-agreement` with the default calibration: the teacher answered `other` for about 30% of the
    calibration requests (3% of training), so the route re-weighs the catch-all's odds by about that shift and the
    student answers out-of-scope requests `other` itself, still keeping the promise. The live traffic is replayed
    twice: the first pass calibrates (its first ~100-180 requests go to the teacher, however many the timing of 16
    clients makes it), the second shows the calibrated route alone."""
    shift.evaluated(model)  # a target needs the eval at it first
    shift.gw.cli("route", "set", "--task", TASK, "--model", model, "--mode", "cascade", "--target-agreement", "0.98")
    time.sleep(1.2)  # every worker applies a route within a second
    first = asyncio.run(replay(shift.gw.base_url, shift.key, shift.live))
    second = asyncio.run(replay(shift.gw.base_url, shift.key, shift.live))
    shown = next(r for r in shift.cli("route", "show") if r["task"] == TASK)
    chosen = [e["detail"] for e in shown["events"] if e["kind"] == "threshold"][-1]
    answered = [(gold, answer) for gold, answer, by in first + second if by == model]
    outside = [gold for gold, _, _ in second if gold == "other"]
    caught = sum(g == a == "other" for g, a, by in second if by == model) / len(outside)
    print("calibrated:", chosen, "out of scope answered `other` by the student once calibrated:", caught)
    assert shown["state"] == "answering", shown
    assert sum(g == a for g, a in answered) / len(answered) >= TARGET
    assert sum(g == "other" and a != "other" for g, a in answered) / (2 * len(outside)) <= 0.05
    assert caught >= 0.5  # the catch-all answered by the student itself (~36% at the eval's threshold)
    assert 0.15 < chosen.get("catch_all_share", 0) < 0.45, chosen
    assert chosen["catch_all_odds"] > 3.0, chosen  # ≈ (0.3/0.7)/(0.03/0.97) ≈ 14, fitted on ~100 requests


def test_the_catch_alls_odds_match_the_teachers_share_and_reweigh_confidences() -> None:
    from insource.routing.policy import catch_all_odds, shifted_confidence

    rng = np.random.default_rng(3)
    trained = rng.uniform(0.01, 0.2, size=400)  # the head's catch-all probability, learned at a low share
    shifted = 5.0 * trained / (5.0 * trained + 1 - trained)
    said = rng.uniform(size=400) < shifted  # the teacher's answers follow the odds ×5
    assert 3.5 < catch_all_odds(trained.tolist(), said.tolist()) < 7.0
    assert catch_all_odds([0.1] * 50, [False] * 50) < 1.0  # fewer catch-alls live than trained: odds shrink
    assert catch_all_odds([], []) == 1.0
    assert shifted_confidence(0.5, 0.5, True, 3.0) == pytest.approx(0.75)  # the catch-all's own answer
    assert shifted_confidence(0.6, 0.2, False, 3.0) == pytest.approx(0.6 / 1.4)  # another label's answer
    assert shifted_confidence(0.0, 0.9, True, 3.0) == 0.0  # a deferred answer stays deferred
    assert shifted_confidence(0.7, 0.2, False, 1.0) == 0.7


def _clusters(spreads: list[float], n: int = 40, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around one random centre per label; a larger spread scatters a label's inputs wider."""
    rng = np.random.default_rng(5)
    xs, ys = [], []
    for label, spread in enumerate(spreads):
        centre = rng.normal(size=dim)
        rows = centre / np.linalg.norm(centre) + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
        xs.append(rows / np.linalg.norm(rows, axis=1, keepdims=True))
        ys += [label] * n
    return np.vstack(xs).astype(np.float32), np.array(ys, dtype=np.int64)


def test_a_catch_all_is_recognised_by_its_name_or_its_spread() -> None:
    from insource.distill.scope import catch_all_shift, find_catch_all

    x, y = _clusters([0.5, 0.6, 0.5, 0.55, 0.6, 0.5, 3.0])
    labels = ["refund", "track", "cancel", "login", "invoice", "address", "bucket"]
    found = find_catch_all(labels, x, y)
    assert found is not None and found[0] == 6 and found[1]["reason"].startswith("spread")
    tight_x, tight_y = _clusters([0.5, 0.6, 0.5, 0.55, 0.6, 0.5, 0.65])
    assert find_catch_all(labels, tight_x, tight_y) is None  # no label stands out: no catch-all
    named = find_catch_all([*labels[:6], "Out-Of-Scope"], tight_x, tight_y)
    assert named is not None and named[0] == 6 and named[1]["reason"] == "name"
    # 3% in training, allowed to reach 40% live: the odds grow (0.4/0.6)/(0.03/0.97) times
    assert catch_all_shift(0.03) == pytest.approx((0.4 / 0.6) / (0.03 / 0.97))
    assert catch_all_shift(0.5) == 1.0


def test_the_ood_cut_is_a_conformal_quantile_of_validation() -> None:
    from insource.distill.scope import ood_threshold

    scores = np.linspace(0.5, 0.99, 199).astype(np.float32)
    assert ood_threshold(scores) == pytest.approx(scores[1])  # ⌊0.01·200⌋ = 2nd smallest
    assert ood_threshold(scores[:50]) == pytest.approx(0.5 - 0.03)  # too few for 1%: the lowest minus a margin
    assert ood_threshold(np.zeros(0, np.float32)) == 0.0
