"""train on a slice of the real data: reproducible, reuses a stored model on retry, fails fast
and stores nothing when the loss diverges."""

import gzip

import numpy as np
import pytest

from mnist_pipeline.errors import TrainingDiverged
from mnist_pipeline.params import TrainParams
from tasks.fetch import MNIST_SHA256
from tasks.normalize import Splits, normalize_and_split
from tasks.evaluate import predict_probabilities
from tasks.train import build_model, train_model
from tasks.validate import validate_mnist


@pytest.fixture(scope="module")
def small(mnist_mirror) -> Splits:
    raw = {n: gzip.decompress((mnist_mirror / f"{n}.gz").read_bytes()) for n in MNIST_SHA256}
    s = normalize_and_split(validate_mnist(raw)[0])
    return Splits(s.x_train[:3000], s.y_train[:3000], s.x_val[:500], s.y_val[:500], s.x_test, s.y_test)


def test_the_default_model_is_the_readme_mlp():
    model = build_model("mlp", 0.001)
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [d.units for d in dense] == [128, 64, 10]
    assert [d.activation.__name__ for d in dense] == ["relu", "relu", "softmax"]
    assert model.count_params() == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert model.optimizer.__class__.__name__ == "Adam" and model.loss == "sparse_categorical_crossentropy"
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.99  # the averaged weights are kept


def test_cnn_option_has_convolutions_dropout_and_batch_norm():
    kinds = {layer.__class__.__name__ for layer in build_model("cnn", 0.001).layers}
    assert {"Conv2D", "Dropout", "BatchNormalization"} <= kinds


def test_training_is_seeded_and_reports_each_epoch(small, local_store):
    params = TrainParams(epochs=2, seed=3)
    epochs_seen = []
    a = train_model(small, params, local_store, "run-a", on_epoch=lambda e, logs: epochs_seen.append(e))
    b = train_model(small, params, local_store, "run-b")
    assert epochs_seen == [1, 2] and not a.reused
    assert a.history["loss"] == pytest.approx(b.history["loss"], rel=1e-5)
    assert set(a.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert local_store.exists("runs/run-a/model.keras") and local_store.exists("runs/run-a/history.json")


def test_the_mlp_holds_and_stores_its_averaged_weights_and_validates_those(small, local_store):
    result = train_model(small, TrainParams(epochs=3, seed=1), local_store, "run-k")
    ema = result.model.optimizer._model_variables_moving_average
    raw_minus_ema = [np.abs(v.numpy() - a.numpy()).max() for v, a in zip(result.model.trainable_variables, ema)]
    assert max(raw_minus_ema) == 0.0  # Keras wrote the averages into the model at the end of fit
    assert result.weights.startswith("moving average") and result.weights in local_store.get("runs/run-k/history.json").decode()
    stored = train_model(small, TrainParams(epochs=3), local_store, "run-k")  # reloads what was stored
    assert stored.reused and stored.weights == result.weights
    # The last validation figures were measured on the averaged weights (swapped in for it): the
    # raw weights' loss differs by ~10% here.
    for model in (result.model, stored.model):
        probabilities = predict_probabilities(model, small.x_val)
        loss = -np.log(probabilities[np.arange(len(small.y_val)), small.y_val]).mean()
        assert loss == pytest.approx(result.history["val_loss"][-1], rel=1e-5)
        assert (probabilities.argmax(1) == small.y_val).mean() == pytest.approx(result.history["val_accuracy"][-1])


def test_a_retried_run_reuses_its_stored_model_instead_of_training(small, local_store):
    first = train_model(small, TrainParams(epochs=1), local_store, "run-r")
    calls = []
    again = train_model(small, TrainParams(epochs=1), local_store, "run-r", on_epoch=lambda e, l: calls.append(e))
    assert again.reused and calls == [] and again.history == first.history
    np.testing.assert_allclose(again.model.predict(small.x_test[:50], verbose=0),
                               first.model.predict(small.x_test[:50], verbose=0), rtol=1e-5)


def test_a_diverging_training_fails_fast_and_stores_nothing(small, local_store):
    # NaN pixels no longer poison the loss (oneDNN's ReLU maps NaN to 0), so blow the weights up
    # with a learning rate the parameter model refuses (<= 10); model_construct skips that check.
    wild = TrainParams.model_construct(**{**TrainParams().model_dump(), "epochs": 5, "learning_rate": 1e20})
    with pytest.raises(TrainingDiverged, match="loss became NaN/inf at epoch 1; nothing was stored"):
        train_model(small, wild, local_store, "run-nan")
    assert local_store.list("runs/") == []
