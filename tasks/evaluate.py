"""evaluate: test accuracy and loss on the 10,000 official test images, with what the report,
the gate and `mnist-pipeline compare` (McNemar) need."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mnist_pipeline.model import predict_probabilities
from tasks.stage import stage


@dataclass
class Evaluation:
    metrics: dict  # JSON-ready: what metrics.json holds
    y_pred: np.ndarray  # uint8 (10000,)
    confidence: np.ndarray  # float32: probability of the predicted class
    # The second most probable class and its probability: a mistake made at p=0.998 against a
    # runner-up of 0.002 reads differently from one at 0.51 against 0.49. Always set by
    # evaluate_model; None only where an Evaluation is rebuilt from stored predictions alone.
    runner_up: np.ndarray | None = None  # uint8 (10000,)
    runner_up_confidence: np.ndarray | None = None  # float32


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sound near 1.0, unlike the normal one)."""
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def per_class_metrics(confusion: np.ndarray) -> dict[str, dict[str, float]]:
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=(precision + recall) > 0)
    return {str(c): {"precision": round(float(precision[c]), 5), "recall": round(float(recall[c]), 5),
                     "f1": round(float(f1[c]), 5), "support": int(support[c])} for c in range(10)}


def evaluate_model(model, x_test: np.ndarray, y_test: np.ndarray) -> Evaluation:
    import keras

    probs = predict_probabilities(model, x_test)
    y_true = y_test.astype(np.int64)
    acc_metric = keras.metrics.SparseCategoricalAccuracy()
    acc_metric.update_state(y_true, probs)
    loss = keras.losses.SparseCategoricalCrossentropy()(y_true, probs)
    y_pred = probs.argmax(axis=1).astype(np.uint8)
    confusion = np.bincount(y_true * 10 + y_pred, minlength=100).reshape(10, 10)
    correct, n = int(np.trace(confusion)), len(y_true)
    low, high = wilson_interval(correct, n)
    metrics = {
        "test_accuracy": round(float(acc_metric.result()), 6),
        "test_loss": round(float(loss), 6),
        "test_accuracy_ci95": [round(low, 6), round(high, 6)],
        "test_samples": n,
        "test_errors": n - correct,
        "per_class": per_class_metrics(confusion),
        "confusion_matrix": confusion.tolist(),
    }
    first, second = top_two(probs)
    rows = np.arange(len(probs))
    return Evaluation(metrics, y_pred, probs[rows, first].astype(np.float32),
                      runner_up=second.astype(np.uint8),
                      runner_up_confidence=probs[rows, second].astype(np.float32))


def top_two(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The most and second most probable class of each row (ties: the lower class first, as
    argmax picks)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    return order[:, 0], order[:, 1]


@stage("evaluate")
def evaluate_task(model, x_test: np.ndarray, y_test: np.ndarray) -> Evaluation:
    return evaluate_model(model, x_test, y_test)
