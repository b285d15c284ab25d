"""The classifier head as plain numpy arrays (serving needs no scikit-learn).

probabilities = (1 - knn_weight) · softmax((E·Wᵀ + b) / T) + knn_weight · kNN vote over training embeddings,
then, when the student has a lexical view (`lexical.py`), mixed with its probabilities by `lexical_weight`.

Out of scope: a flagged input gets confidence 0, so it is deferred to the teacher at any threshold (see
`distill/scope.py` for how each number is chosen).
- Unlike the training traffic: its mean cosine similarity to its `ood_k` nearest training inputs is below
  `ood_threshold`. (Models distilled before this rule have `ood_k` 1: the best similarity, no catch-all.)
- `catch_all` (≥ 0) is the label the teacher gives requests outside the task's scope (e.g. `other`); its share
  of live traffic can grow far beyond its training share. An in-scope answer is flagged when one of the input's
  `ood_k` nearest training inputs carries the catch-all, or when the catch-all would be at least as likely as
  the answer with its odds multiplied by `catch_all_shift`. A catch-all answer is never boosted by that shift:
  it is answered at its own probability, against the same threshold as any other label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HEAD_FILE = "head.npz"
HEAD_ONNX = "head.onnx"
Matrix = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def softmax(z: Matrix) -> Matrix:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32)


def mix(base: Matrix, knn: Matrix | None, knn_weight: float, lexical: Matrix | None, lexical_weight: float) -> Matrix:
    """The head's probabilities: the linear view, then the kNN vote, then the lexical view, each by its weight."""
    probs = base
    if knn is not None and knn_weight > 0:
        probs = (1 - knn_weight) * probs + knn_weight * knn
    if lexical is not None and lexical_weight > 0:
        probs = (1 - lexical_weight) * probs + lexical_weight * lexical
    return np.asarray(probs, dtype=np.float32)


@dataclass
class Head:
    weights: Matrix  # (classes, dim)
    bias: Matrix  # (classes,)
    temperature: float
    train_vectors: Matrix  # (n, dim) L2-normalised training embeddings (OOD + kNN evidence)
    train_labels: IntArray  # (n,)
    ood_threshold: float
    knn_weight: float = 0.0
    knn_k: int = 10
    knn_temperature: float = 0.05
    lexical_weight: float = 0.0
    ood_k: int = 1
    catch_all: int = -1
    catch_all_shift: float = 1.0
    _session: Any = field(default=None, repr=False, compare=False)

    @property
    def n_classes(self) -> int:
        return int(self.weights.shape[0])

    def logits(self, emb: Matrix) -> Matrix:
        return np.asarray(emb @ self.weights.T + self.bias, dtype=np.float32)

    def scores(self, emb: Matrix) -> tuple[Matrix, Matrix]:
        """(logits, cosine similarities to the training inputs).

        Served through a one-thread ONNX Runtime session when `head.onnx` is present: numpy's BLAS wakes
        its thread pool on every call, which costs more than the product itself at batch 1 on a busy box.
        """
        if self._session is not None:
            logits, sims = self._session.run(None, {"embedding": np.ascontiguousarray(emb, dtype=np.float32)})
            return np.asarray(logits, np.float32), np.asarray(sims, np.float32)
        sims = emb @ self.train_vectors.T if len(self.train_vectors) else np.ones((len(emb), 1), np.float32)
        return self.logits(emb), np.asarray(sims, np.float32)

    def knn_proba(self, sims: Matrix) -> Matrix:
        k = min(self.knn_k, sims.shape[1])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, idx, axis=1)
        w = np.exp((top - top.max(axis=1, keepdims=True)) / self.knn_temperature)
        out = np.zeros((sims.shape[0], self.n_classes), dtype=np.float32)
        rows = np.repeat(np.arange(sims.shape[0]), k)
        np.add.at(out, (rows, self.train_labels[idx].ravel()), w.ravel())
        return np.asarray(out / out.sum(axis=1, keepdims=True), dtype=np.float32)

    def nearness(self, sims: Matrix) -> Matrix:
        """Mean cosine similarity of each row to its `ood_k` nearest training inputs (the OOD score)."""
        k = max(1, min(self.ood_k, sims.shape[1]))
        if k == 1:
            return np.asarray(sims.max(axis=1), dtype=np.float32)
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        return np.asarray(top.mean(axis=1), dtype=np.float32)

    def _mixed(self, emb: Matrix, lexical: Matrix | None) -> tuple[Matrix, Matrix]:
        """(class probabilities, cosine similarities to the training inputs)."""
        if self.lexical_weight > 0 and lexical is None:
            raise ValueError("this head mixes in a lexical view: pass its probabilities")
        logits, sims = self.scores(emb)
        knn = self.knn_proba(sims) if self.knn_weight > 0 else None
        return mix(softmax(logits / self.temperature), knn, self.knn_weight, lexical, self.lexical_weight), sims

    def proba(self, emb: Matrix, lexical: Matrix | None = None) -> tuple[Matrix, Matrix]:
        """(class probabilities, OOD score: mean cosine to the `ood_k` nearest training inputs) per row of `emb`.

        `lexical`: the lexical view's probabilities for the same inputs (ignored when `lexical_weight` is 0).
        """
        probs, sims = self._mixed(emb, lexical)
        return probs, self.nearness(sims)

    def near_catch_all(self, probs: Matrix, idx: IntArray, sims: Matrix) -> npt.NDArray[np.bool_]:
        """In-scope answers the catch-all puts in doubt (see the module docstring)."""
        rows = np.arange(len(idx))
        if self.catch_all < 0 or not len(idx):
            return np.zeros(len(idx), dtype=bool)
        inside = idx != self.catch_all
        doubt = self.catch_all_shift * probs[:, self.catch_all] >= probs[rows, idx]
        k = max(1, min(self.ood_k, sims.shape[1]))
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        doubt |= (self.train_labels[nearest] == self.catch_all).any(axis=1)
        return np.asarray(inside & doubt, dtype=bool)

    def predict(self, emb: Matrix, lexical: Matrix | None = None) -> tuple[IntArray, Matrix, npt.NDArray[np.bool_]]:
        """(class index, confidence, out-of-scope flag) per row; flagged rows get confidence 0."""
        idx, conf, ood, _ = self.predict_full(emb, lexical)
        return idx, conf, ood

    def predict_full(
        self, emb: Matrix, lexical: Matrix | None = None
    ) -> tuple[IntArray, Matrix, npt.NDArray[np.bool_], Matrix | None]:
        """`predict`, and each row's probability of the catch-all label (None without one): a cascade re-weighs
        it by the catch-all's live share (`routing.policy.shifted_confidence`)."""
        probs, sims = self._mixed(emb, lexical)
        idx = probs.argmax(axis=1).astype(np.int64)
        conf = probs[np.arange(len(idx)), idx]
        ood = (self.nearness(sims) < self.ood_threshold) | self.near_catch_all(probs, idx, sims)
        conf = np.where(ood, 0.0, conf).astype(np.float32)
        catch_all = probs[:, self.catch_all].astype(np.float32) if self.catch_all >= 0 else None
        return idx.astype(np.int64), conf, ood, catch_all

    def save(self, folder: Path) -> None:
        np.savez(
            folder / HEAD_FILE,
            weights=self.weights.astype(np.float32),
            bias=self.bias.astype(np.float32),
            train_vectors=self.train_vectors.astype(np.float16),
            train_labels=self.train_labels.astype(np.int32),
            scalars=np.array(
                [
                    self.temperature,
                    self.ood_threshold,
                    self.knn_weight,
                    self.knn_k,
                    self.knn_temperature,
                    self.lexical_weight,
                    self.ood_k,
                    self.catch_all,
                    self.catch_all_shift,
                ],
                dtype=np.float64,
            ),
        )

    def save_onnx(self, folder: Path) -> None:
        """Write `head.onnx` (the two products) — needs the `onnx` package, i.e. distill time only."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(np.ascontiguousarray(self.weights.T, np.float32), "w")
        b = numpy_helper.from_array(self.bias.astype(np.float32), "b")
        stored = self.train_vectors.astype(np.float16).astype(np.float32)  # exactly what head.npz keeps
        tv = numpy_helper.from_array(np.ascontiguousarray(stored.T), "tv")
        nodes = [
            helper.make_node("MatMul", ["embedding", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("MatMul", ["embedding", "tv"], ["sims"]),
        ]
        dim = int(self.weights.shape[1])
        graph = helper.make_graph(
            nodes,
            "head",
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
            [
                helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", self.n_classes]),
                helper.make_tensor_value_info("sims", TensorProto.FLOAT, ["batch", len(self.train_vectors)]),
            ],
            initializer=[w, b, tv],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(folder / HEAD_ONNX))

    def attach_session(self, folder: Path) -> None:
        path = folder / HEAD_ONNX
        if not path.is_file() or not len(self.train_vectors):
            return
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    @classmethod
    def load(cls, folder: Path, *, serving: bool = False) -> Head:
        head = cls._load_arrays(folder)
        if serving:
            head.attach_session(folder)
        return head

    @classmethod
    def _load_arrays(cls, folder: Path) -> Head:
        with np.load(folder / HEAD_FILE, allow_pickle=False) as data:
            s = data["scalars"].tolist()
            return cls(
                weights=np.asarray(data["weights"], np.float32),
                bias=np.asarray(data["bias"], np.float32),
                temperature=float(s[0]),
                train_vectors=np.asarray(data["train_vectors"], np.float32),
                train_labels=np.asarray(data["train_labels"], np.int64),
                ood_threshold=float(s[1]),
                knn_weight=float(s[2]),
                knn_k=int(s[3]),
                knn_temperature=float(s[4]),
                lexical_weight=float(s[5]) if len(s) > 5 else 0.0,
                ood_k=int(s[6]) if len(s) > 6 else 1,  # older heads: the best similarity
                catch_all=int(s[7]) if len(s) > 7 else -1,
                catch_all_shift=float(s[8]) if len(s) > 8 else 1.0,
            )
