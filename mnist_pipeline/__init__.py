"""mnist-pipeline's lower layer: settings, store, registry, dataset format."""

from mnist_pipeline import tensorflow_start

tensorflow_start.prepare()  # before anything imports TensorFlow or Keras
