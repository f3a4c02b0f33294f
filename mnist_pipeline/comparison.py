"""Two models on the same 10,000 test images: McNemar's exact test and per-class recall.

Computed from stored predictions (runs/<id>/predictions.npy) and the verified test labels, so
the report's "compared with production" and `mnist-pipeline compare` agree, and neither trusts
a metrics.json.
"""

from __future__ import annotations

import io

import numpy as np

from mnist_pipeline.errors import NotFoundInStore, PipelineError
from mnist_pipeline.stats import mcnemar_exact


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray) -> list[float]:
    return [round(float(np.mean(y_pred[y_true == c] == c)), 5) for c in range(10)]


def compare_predictions(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """A vs B: accuracy of each, right only by each, McNemar's exact p, per-class recall."""
    right_a, right_b = pred_a == y_true, pred_b == y_true
    only_a, only_b, p = mcnemar_exact(right_a, right_b)
    return {"accuracy_a": round(float(right_a.mean()), 6), "accuracy_b": round(float(right_b.mean()), 6),
            "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": p,
            "recall_a": per_class_recall(y_true, pred_a), "recall_b": per_class_recall(y_true, pred_b)}


def stored_predictions(store, run_id: str) -> np.ndarray:
    key = f"runs/{run_id}/predictions.npy"
    try:
        predictions = np.load(io.BytesIO(store.get(key)), allow_pickle=False)
    except NotFoundInStore:
        raise PipelineError(f"run {run_id} has no stored predictions ({key}): the run did not finish, "
                            "or `mnist-pipeline gc` collected them") from None
    except ValueError:
        raise PipelineError(f"{key} is not a NumPy array file; `mnist-pipeline verify` checks it") from None
    if predictions.shape != (10_000,):
        raise PipelineError(f"{key} holds {predictions.shape}, not one prediction per test image")
    return predictions


def with_production(store, production_run_id: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict | None:
    """This run (a) against the production model (b), for the report; None when production's
    predictions are not available (collected, or a run from before they were stored)."""
    try:
        theirs = stored_predictions(store, production_run_id)
    except PipelineError:
        return None
    return dict(compare_predictions(y_true, y_pred, theirs), production_run_id=production_run_id)
