"""Arrays that TensorFlow can use in place. Keras's `fit`/`predict` copy a NumPy array into a
TensorFlow tensor (the 55,000 training images: 172 MB, and twice that while converting); a
tensor made through DLPack shares the array's buffer instead, when the buffer has the alignment
TensorFlow's kernels assume."""

from __future__ import annotations

import numpy as np

# Eigen's largest vector alignment (AVX-512) in TensorFlow's CPU build: kernels check it, and an
# unaligned shared buffer aborts the process rather than raising.
TF_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """np.empty whose buffer starts on a TF_ALIGNMENT boundary (NumPy guarantees only 16)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + TF_ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % TF_ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def is_shareable(array: np.ndarray) -> bool:
    return array.flags.c_contiguous and array.ctypes.data % TF_ALIGNMENT == 0


def as_tensor(array: np.ndarray):
    """A tf.Tensor over `array`'s own memory when it is shareable, else a copy. The tensor keeps
    the array alive; neither may be written to while the other is in use."""
    import tensorflow as tf

    if not is_shareable(array):
        return tf.convert_to_tensor(array)
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
