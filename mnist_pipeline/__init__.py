"""mnist-pipeline's lower layer: settings, store, registry, dataset format."""

from mnist_pipeline import tensorflow_start, threadsafe_ast

threadsafe_ast.install()  # before any of our threads parses (see the module)
tensorflow_start.prepare()  # before anything imports TensorFlow or Keras
