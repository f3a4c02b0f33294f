"""Stored predictions read back with their header checked before anything is allocated, and
without evaluating it as Python: `verify` reads them from many threads, and on CPython
3.11.0-3.11.7 two AST parses at once can fail (mnist_pipeline/threadsafe_ast.py)."""

from __future__ import annotations

import ast
import io

import numpy as np
import pytest

from mnist_pipeline.comparison import predictions_from_npy
from mnist_pipeline.errors import PipelineError

pytestmark = pytest.mark.unit


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_what_the_pipeline_stores_reads_back_without_parsing_python(monkeypatch, dtype):
    stored = (np.arange(10_000) % 10).astype(dtype)
    data = npy(stored)

    def no_parsing(*_args, **_kwargs):
        raise AssertionError("the header was parsed as Python")

    monkeypatch.setattr(ast, "parse", no_parsing)
    read = predictions_from_npy(data, "runs/r/predictions.npy")
    assert read.dtype == stored.dtype and np.array_equal(read, stored)


@pytest.mark.parametrize("data, problem", [
    (npy(np.zeros(5, np.uint8)), "holds (5,) of uint8, not one integer prediction per test image (10,000)"),
    (npy(np.zeros(10_000, np.float32)), "holds (10000,) of float32, not one integer"),
    (npy(np.zeros((100, 100), np.uint8)), "holds (100, 100) of uint8, not one integer"),
    (npy(np.zeros(10_000, np.uint8))[:-1], "is 10,127 bytes, not the 10,128 its header announces"),
    (b"PK\x03\x04 not numpy", "is not a NumPy array file this pipeline wrote"),
])
def test_anything_else_is_one_line_naming_the_file(data, problem):
    with pytest.raises(PipelineError) as err:
        predictions_from_npy(data, "runs/r/predictions.npy")
    assert str(err.value).startswith("runs/r/predictions.npy ") and problem in str(err.value)
    assert "\n" not in str(err.value)
