"""mnist-pipeline's lower layer: settings, store, registry, dataset format."""

import os

# TensorFlow's x86 wheels switch oneDNN on by themselves only on CPUs with AVX512_VNNI, AVX512_BF16
# or AMX. Elsewhere (this project's AVX2 machine, AMD EPYC Zen 3) its convolutions fall back to
# Eigen kernels built for plain AVX: the cnn's 7 epochs took 137 s instead of 69 s (measured).
# It must be set before TensorFlow is imported, hence here, at the root of every entry point
# (flows, the CLI, Dask workers unpickling a trial). A value the user set wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
