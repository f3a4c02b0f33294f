"""Two models on the same 10,000 test images: McNemar's exact test and per-class recall.

Computed from stored predictions (runs/<id>/predictions.npy) and the verified test labels, so
the report's "compared with production" and `mnist-pipeline compare` agree, and neither trusts
a metrics.json.
"""

from __future__ import annotations

import re

import numpy as np

from mnist_pipeline import keys
from mnist_pipeline.dataset import FILES
from mnist_pipeline.errors import NotFoundInStore, PipelineError
from mnist_pipeline.runs import why_missing
from mnist_pipeline.stats import mcnemar_exact

TEST_IMAGES = FILES["t10k-labels-idx1-ubyte"].dims[0]  # a stored prediction file holds one for each


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
    key = keys.predictions(run_id)
    try:
        data = store.get(key)
    except NotFoundInStore:
        raise PipelineError(f"run {run_id} has no stored predictions ({key}): "
                            f"{why_missing(store, run_id, key)}") from None
    return predictions_from_npy(data, key)


# The header NumPy writes for an array, read by this pattern rather than by NumPy's reader: that
# one evaluates the header as Python (an AST parse, which `verify` would run from many threads at
# once) and allocates whatever shape the header claims.
_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (False|True), "
                         r"'shape': \(([\d, ]*)\), \} *\n")


def predictions_from_npy(data: bytes, key: str) -> np.ndarray:
    """One integer prediction per test image from .npy bytes, its header checked against the
    bytes there are before anything is allocated (np.load allocates whatever a header claims:
    37 GiB for a 1 KB file)."""
    size_bytes = {b"\x01": 2, b"\x02": 4}.get(data[6:7])
    match = None
    if data.startswith(_NPY_MAGIC) and size_bytes:
        start = 8 + size_bytes
        offset = start + int.from_bytes(data[8:start], "little")
        match = _NPY_HEADER.fullmatch(data[start:offset].decode("latin-1"))
    if not match:
        raise PipelineError(f"{key} is not a NumPy array file this pipeline wrote; `mnist-pipeline verify` checks it")
    descr, fortran_order, dims = match.groups()
    shape = tuple(int(d) for d in dims.replace(" ", "").split(",") if d)
    try:
        dtype = np.dtype(descr)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "iu" or shape != (TEST_IMAGES,) or fortran_order != "False":
        raise PipelineError(f"{key} holds {shape} of {dtype or descr}, not one integer prediction per test image "
                            f"({TEST_IMAGES:,})")
    expected = offset + TEST_IMAGES * dtype.itemsize
    if len(data) != expected:
        raise PipelineError(f"{key} is {len(data):,} bytes, not the {expected:,} its header announces: "
                            "truncated or damaged")
    return np.frombuffer(data, dtype, count=TEST_IMAGES, offset=offset)


def with_production(store, production_run_id: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict | None:
    """This run (a) against the production model (b), for the report; None when production's
    predictions are not available (collected, or a run from before they were stored)."""
    try:
        theirs = stored_predictions(store, production_run_id)
    except PipelineError:
        return None
    return dict(compare_predictions(y_true, y_pred, theirs), production_run_id=production_run_id)
