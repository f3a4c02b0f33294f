"""The plain Keras script the pipeline replaces, as the README describes it: the same MLP, 10
epochs, batch 32, `x / 255.0` float64 arrays, validation on the test set, plots at the end.
Reads the IDX files from a local mirror (no network here); prints one JSON line of results."""

import gzip
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
t_start = time.perf_counter()

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # the original showed plots in a notebook window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import keras  # noqa: E402


def load(mirror, name, offset, shape):
    with gzip.open(os.path.join(mirror, name + ".gz")) as fh:
        return np.frombuffer(fh.read(), np.uint8, offset=offset).reshape(shape)


mirror, epochs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keras.utils.set_random_seed(seed)
x_train = load(mirror, "train-images-idx3-ubyte", 16, (-1, 28, 28))
y_train = load(mirror, "train-labels-idx1-ubyte", 8, (-1,))
x_test = load(mirror, "t10k-images-idx3-ubyte", 16, (-1, 28, 28))
y_test = load(mirror, "t10k-labels-idx1-ubyte", 8, (-1,))
x_train, x_test = x_train / 255.0, x_test / 255.0

model = keras.Sequential([
    keras.layers.Flatten(input_shape=(28, 28)),
    keras.layers.Dense(128, activation="relu"),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
t_train = time.perf_counter()
history = model.fit(x_train, y_train, epochs=epochs, batch_size=32,
                    validation_data=(x_test, y_test), verbose=0)
train_seconds = time.perf_counter() - t_train
test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)

fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
a.plot(history.history["loss"], label="train"); a.plot(history.history["val_loss"], label="val")
b.plot(history.history["accuracy"], label="train"); b.plot(history.history["val_accuracy"], label="val")
fig.savefig(os.devnull, format="png")
print(json.dumps({"test_accuracy": round(float(test_acc), 6), "train_seconds": round(train_seconds, 2),
                  "script_seconds": round(time.perf_counter() - t_start, 2)}))
