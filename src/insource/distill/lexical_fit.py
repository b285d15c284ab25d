"""Training the lexical view (scikit-learn's logistic regression over the TF-IDF features of
`insource.registry.lexical`); serving needs only the registry module."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt

from insource.registry.lexical import CHAR_MIN_DF, Block, C, Lexical, char_grams, word_grams


def _sparse(lex: Lexical, texts: list[str]) -> Any:
    from scipy.sparse import csr_matrix

    indptr, cols, vals = [0], [], []
    for c, v in lex.rows(texts):
        cols.extend(c)
        vals.extend(v)
        indptr.append(len(cols))
    return csr_matrix((vals, cols, indptr), shape=(len(texts), lex.n_features), dtype=np.float32)


def fit_lexical(texts: list[str], y: npt.NDArray[np.int64], n_classes: int) -> Lexical | None:
    """Vocabulary and idf from `texts`, then a multinomial logistic regression (temperature 1: fit later).

    None when the texts share no n-gram at all (nothing lexical to learn from).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    words = Block.fit([word_grams(t) for t in texts], 1, 0)
    chars = Block.fit([char_grams(t) for t in texts], CHAR_MIN_DF, len(words.vocab))
    lex = Lexical(words, chars, np.zeros((0, n_classes), np.float32), np.zeros(n_classes, np.float32))
    if lex.n_features == 0 or len(set(y.tolist())) < 2:
        return None
    x = _sparse(lex, texts)
    clf = LogisticRegression(C=C, max_iter=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    weights = np.zeros((lex.n_features, n_classes), dtype=np.float32)
    bias = np.full(n_classes, -1e4, dtype=np.float32)
    classes = clf.classes_.astype(np.int64)
    if len(classes) == 2:
        weights[:, classes] = np.vstack([-clf.coef_[0] / 2, clf.coef_[0] / 2]).T
        bias[classes] = np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
    else:
        weights[:, classes] = clf.coef_.T
        bias[classes] = clf.intercept_
    lex.weights, lex.bias = weights, bias
    return lex
