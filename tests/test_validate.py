"""validate on the real files, and on copies damaged in each way the stage must catch."""

import gzip

import numpy as np
import pytest

from mnist_pipeline.errors import DatasetError
from tasks.fetch import MNIST_SHA256
from tasks.validate import validate_mnist

pytestmark = pytest.mark.unit  # no server, no training: `make test-unit`


@pytest.fixture(scope="module")
def raw(mnist_mirror):
    return {name: gzip.decompress((mnist_mirror / f"{name}.gz").read_bytes()) for name in MNIST_SHA256}


def damaged(raw, name, fn):
    out = dict(raw)
    out[name] = bytes(fn(bytearray(raw[name])))
    return out


def test_real_files_pass_with_the_known_profile(raw):
    arrays, profile = validate_mnist(raw)
    assert arrays.x_train.shape == (60000, 28, 28) and arrays.x_train.dtype == np.uint8
    assert arrays.y_test.shape == (10000,)
    assert profile["train_class_counts"] == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert profile["test_class_counts"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert 0.13 < profile["train_pixel_mean"] < 0.14


def test_wrong_magic_number(raw):
    def fn(b):
        b[2:4] = b"\x08\x01"
        return b
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: magic number 0x00000801, expected 0x00000803"):
        validate_mnist(damaged(raw, "train-images-idx3-ubyte", fn))


def test_labels_out_of_range(raw):
    def fn(b):
        b[8:11] = b"\x0b\x0c\xff"
        return b
    with pytest.raises(DatasetError, match=r"t10k labels: 3 outside 0-9"):
        validate_mnist(damaged(raw, "t10k-labels-idx1-ubyte", fn))


def test_image_and_label_counts_differ(raw):
    def fn(b):  # a labels file consistent with itself, but one label short
        b[4:8] = (59999).to_bytes(4, "big")
        return b[:-1]
    with pytest.raises(DatasetError, match=r"train: 60000 images but 59999 labels"):
        validate_mnist(damaged(raw, "train-labels-idx1-ubyte", fn))


def test_body_shorter_than_header_says(raw):
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: .* bytes but its header"):
        validate_mnist(damaged(raw, "t10k-images-idx3-ubyte", lambda b: b[:-784]))


def test_a_missing_class(raw):
    def fn(b):
        labels = np.frombuffer(bytes(b[8:]), np.uint8).copy()
        labels[labels == 7] = 1
        return b[:8] + labels.tobytes()
    with pytest.raises(DatasetError, match=r"t10k: no sample of class\(es\) \[7\]"):
        validate_mnist(damaged(raw, "t10k-labels-idx1-ubyte", fn))
