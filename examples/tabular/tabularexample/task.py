"""tabularexample: the data, the numpy MLP, its training loop and its metrics."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from sklearn.datasets import make_classification
from sklearn.metrics import balanced_accuracy_score

from fl_stream.flower import current_reporter

Weights = list[NDArray[np.float64]]
Data = tuple[NDArray[np.float64], NDArray[np.int64]]

NUM_FEATURES, HIDDEN, NUM_CLASSES = 12, 16, 3
SAMPLES_PER_PARTITION = 300


def load_data(partition_id: int, num_partitions: int, seed: int = 42) -> tuple[Data, Data]:
    """This partition's (train, validation) split of one imbalanced 3-class data set."""
    x, y = make_classification(
        n_samples=SAMPLES_PER_PARTITION * num_partitions,
        n_features=NUM_FEATURES,
        n_informative=6,
        n_classes=NUM_CLASSES,
        weights=[0.7, 0.2, 0.1],  # imbalanced: accuracy flatters, balanced accuracy does not
        random_state=seed,
    )
    part = np.array_split(np.arange(len(y)), num_partitions)[partition_id]
    cut = int(0.8 * len(part))
    return (x[part[:cut]], y[part[:cut]]), (x[part[cut:]], y[part[cut:]])


def init_weights(seed: int = 0) -> Weights:
    """A one-hidden-layer MLP: W1, b1, W2, b2."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(0, 1 / np.sqrt(NUM_FEATURES), (NUM_FEATURES, HIDDEN)),
        np.zeros(HIDDEN),
        rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, NUM_CLASSES)),
        np.zeros(NUM_CLASSES),
    ]


def _losses(probs: NDArray[np.float64], y: NDArray[np.int64]) -> NDArray[np.float64]:
    """Each example's cross-entropy."""
    return -np.log(probs[np.arange(len(y)), y] + 1e-12)


def _forward(weights: Weights, x: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
    w1, b1, w2, b2 = weights
    hidden = np.maximum(x @ w1 + b1, 0.0)
    logits = hidden @ w2 + b2
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return hidden, exp / exp.sum(axis=1, keepdims=True)


def train(
    weights: Weights, data: Data, epochs: int, lr: float, proximal_mu: float, seed: int
) -> Weights:
    """Mini-batch SGD on cross-entropy plus FedProx's ``mu / 2 * ||w - w_global||^2``.

    Inside a ClientApp call, it streams its progress live (fl-stream's ``progress_mod``).
    """
    x, y = data
    global_weights = [w.copy() for w in weights]
    weights = [w.copy() for w in weights]
    rng = np.random.default_rng(seed)
    progress = current_reporter()  # fl-stream: this call's reporter (outside one: a no-op)
    for epoch in range(1, epochs + 1):
        progress.epoch_started(epoch, epochs)
        batches = np.array_split(rng.permutation(len(y)), max(1, len(y) // 32))
        loss_sum, seen = 0.0, 0
        for done, batch in enumerate(batches, start=1):
            hidden, probs = _forward(weights, x[batch])
            loss_sum += float(_losses(probs, y[batch]).sum())
            seen += len(batch)
            d_logits = probs.copy()
            d_logits[np.arange(len(batch)), y[batch]] -= 1.0
            d_logits /= len(batch)
            d_hidden = (d_logits @ weights[2].T) * (hidden > 0)
            grads = [x[batch].T @ d_hidden, d_hidden.sum(0), hidden.T @ d_logits, d_logits.sum(0)]
            for w, g, w_global in zip(weights, grads, global_weights, strict=True):
                w -= lr * (g + proximal_mu * (w - w_global))
            progress.batch_done(done, len(batches), len(batch), loss=loss_sum / seen)
    return weights


def evaluate(weights: Weights, data: Data) -> dict[str, float]:
    """Loss, accuracy and balanced accuracy (scikit-learn's) of ``weights`` on ``data``."""
    x, y = data
    _, probs = _forward(weights, x)
    predicted = probs.argmax(axis=1)
    return {
        "loss": float(_losses(probs, y).mean()),
        "accuracy": float((predicted == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
    }
