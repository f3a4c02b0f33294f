import gzip

import numpy as np
import pytest

from mnist_pipeline.errors import ConfigError
from mnist_pipeline.tensors import is_shareable
from tasks.fetch import MNIST_SHA256
from tasks.normalize import normalize_and_split, to_unit_float32
from tasks.validate import validate_mnist

pytestmark = pytest.mark.unit  # no server, no training: `make test-unit`


@pytest.fixture(scope="module")
def arrays(mnist_mirror):
    raw = {n: gzip.decompress((mnist_mirror / f"{n}.gz").read_bytes()) for n in MNIST_SHA256}
    return validate_mnist(raw)[0]


def test_unit_float32_is_exactly_what_keras_makes_of_x_over_255():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = to_unit_float32(x)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    # bit for bit: the README script's float64 `x / 255.0`, cast to float32 as Keras does
    np.testing.assert_array_equal(out, (x / 255.0).astype(np.float32))
    assert is_shareable(out)  # TensorFlow can use it in place


def test_split_is_seeded_disjoint_and_keeps_the_test_set_apart(arrays):
    a = normalize_and_split(arrays, validation_size=5000, seed=7)
    b = normalize_and_split(arrays, validation_size=5000, seed=7)
    c = normalize_and_split(arrays, validation_size=5000, seed=8)
    assert a.x_train.shape == (55000, 28, 28) and a.x_val.shape == (5000, 28, 28)
    assert a.x_test.shape == (10000, 28, 28)
    for x in (a.x_train, a.x_val, a.x_test):
        assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.y_val, c.y_val)
    # every training image is in exactly one of train/val
    assert np.bincount(a.y_train, minlength=10).sum() + len(a.y_val) == 60000
    np.testing.assert_array_equal(np.bincount(a.y_train, minlength=10) + np.bincount(a.y_val, minlength=10),
                                  np.bincount(arrays.y_train, minlength=10))


def test_validation_size_out_of_range(arrays):
    with pytest.raises(ConfigError, match="validation_size 60000"):
        normalize_and_split(arrays, validation_size=60000, seed=42)
