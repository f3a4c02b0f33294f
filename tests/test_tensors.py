"""TensorFlow uses normalize's arrays in place, and falls back to a copy for any other array."""

import numpy as np
import pytest

from mnist_pipeline.tensors import TF_ALIGNMENT, aligned_empty, as_tensor, is_shareable

pytestmark = pytest.mark.unit  # no server, no training: `make test-unit`


@pytest.mark.parametrize("shape,dtype", [((3, 28, 28), np.float32), ((7,), np.uint8), ((5, 3), np.float64)])
def test_aligned_empty_starts_on_the_boundary_tensorflow_checks(shape, dtype):
    a = aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
    assert a.ctypes.data % TF_ALIGNMENT == 0 and is_shareable(a)


def test_an_aligned_array_is_shared_not_copied():
    x = aligned_empty((100, 28, 28))
    x[:] = 0.5
    t = as_tensor(x)
    x[3, 4, 5] = 2.0  # visible through the tensor: same memory
    assert float(t[3, 4, 5]) == 2.0 and t.dtype.name == "float32" and tuple(t.shape) == x.shape


def test_an_unaligned_or_strided_array_is_copied_and_still_correct():
    base = np.arange(10 * 28 * 28 + 1, dtype=np.float32)
    unaligned = base[1:].reshape(10, 28, 28)  # 4 bytes past an allocation: never 64-aligned
    strided = aligned_empty((10, 28, 28))[::2]
    strided[:] = 1.0
    for x in (unaligned, strided):
        assert not is_shareable(x)
        t = as_tensor(x)
        # an op that reads the buffer with aligned vector loads would abort on a shared one
        np.testing.assert_array_equal(t[1:3].numpy(), x[1:3])
