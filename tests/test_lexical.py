"""The classifier student's lexical view: featuriser faithful to TF-IDF, fit, round trip, mixing.

The registered student with a lexical view is exercised in tests/test_distill.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from insource.distill.lexical_fit import fit_lexical
from insource.registry.head import Head
from insource.registry.lexical import Lexical, char_grams, word_grams

TEXTS = [
    "I lost my card yesterday, can I get a new one?",
    "How long does a  transfer take to arrive?",
    "Why was I charged a fee for topping up by card",
    "top-up by bank transfer: is there a charge?",
    "a b c",
    "My PIN is blocked!!",
]


def test_grams_match_scikit_learn_analyzers() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    words = TfidfVectorizer(ngram_range=(1, 2)).build_analyzer()
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5)).build_analyzer()
    for text in TEXTS:
        assert Counter(word_grams(text)) == Counter(words(text)), text
        assert Counter(char_grams(text)) == Counter(chars(text)), text


def test_tfidf_values_match_scikit_learn() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    lex = fit_lexical(TEXTS * 2, np.array([0, 1, 2, 3, 0, 1] * 2), 4)
    assert lex is not None
    ref = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    matrix = ref.fit_transform(TEXTS * 2)
    names = ref.get_feature_names_out()
    for row, text in enumerate(TEXTS):
        cols, vals = lex.words.vector(word_grams(text))
        inverse = {i: g for g, i in lex.words.vocab.items()}
        ours = {inverse[c]: v for c, v in zip(cols, vals, strict=True)}
        theirs = {names[c]: matrix[row, c] for c in matrix[row].indices}
        assert ours.keys() == theirs.keys()
        assert all(abs(ours[g] - theirs[g]) < 1e-5 for g in ours)


def test_nothing_lexical_to_learn_from_gives_no_view() -> None:
    assert fit_lexical(["1", "2", "3", "4"], np.array([0, 1, 0, 1]), 2) is None  # no shared n-gram at all
    texts, _ = _toy()
    assert fit_lexical(texts, np.zeros(len(texts), dtype=np.int64), 3) is None  # one class only


def _toy() -> tuple[list[str], np.ndarray]:
    topics = {
        0: ["card lost", "lost my card", "my card was stolen", "stolen card help", "card missing today"],
        1: ["exchange rate euro", "what rate for dollars", "currency exchange rate", "rate to pounds", "euro rate"],
        2: ["top up failed", "my top-up did not work", "top up declined", "cannot top up", "top up error"],
    }
    texts = [t for ts in topics.values() for t in ts]
    y = np.array([k for k, ts in topics.items() for _ in ts], dtype=np.int64)
    return texts, y


def test_fit_predicts_and_round_trips(tmp_path: Path) -> None:
    texts, y = _toy()
    lex = fit_lexical(texts, y, 3)
    assert lex is not None
    lex.temperature = 0.5
    probs = lex.proba(["I think my card got stolen", "the euro exchange rate please", "top up keeps failing"])
    assert probs.argmax(axis=1).tolist() == [0, 1, 2]
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    lex.save(tmp_path)
    back = Lexical.load(tmp_path)
    assert back is not None and back.temperature == 0.5 and back.n_features == lex.n_features
    again = back.proba(["I think my card got stolen", "the euro exchange rate please", "top up keeps failing"])
    assert np.allclose(again, probs, atol=1e-3)  # weights are stored as float16
    assert Lexical.load(tmp_path / "missing") is None
    unseen = back.proba(["zzz qqq"])  # no known gram: the bias alone decides, still a distribution
    assert np.allclose(unseen.sum(), 1.0, atol=1e-5)


def test_head_mixes_the_lexical_view_and_insists_on_it() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(4, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    head = Head(np.eye(3, 8, dtype=np.float32), np.zeros(3, np.float32), 1.0, emb, np.array([0, 1, 2, 0]), 0.0)
    lexical = np.tile(np.array([[0.0, 0.0, 1.0]], np.float32), (4, 1))
    plain, _ = head.proba(emb)
    head.lexical_weight = 0.5
    mixed, _ = head.proba(emb, lexical)
    assert np.allclose(mixed, 0.5 * plain + 0.5 * lexical)
    with pytest.raises(ValueError, match="lexical"):
        head.predict(emb)


def test_two_classes_keep_symmetric_logits() -> None:
    texts, y = _toy()
    keep = y < 2
    lex = fit_lexical([t for t, k in zip(texts, keep, strict=True) if k], y[keep], 2)
    assert lex is not None
    assert lex.weights.shape == (lex.n_features, 2)
    probs = lex.proba(["my card was stolen", "euro exchange rate"])
    assert probs.argmax(axis=1).tolist() == [0, 1]
    logits = lex.logits(["my card was stolen"])
    assert abs(float(logits.sum())) < 1e-4  # scikit-learn's one binary row, split into ±half
