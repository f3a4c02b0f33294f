"""train on a slice of the real data: reproducible, reuses a stored model on retry, fails fast
and stores nothing when the loss diverges."""

import gzip

import numpy as np
import pytest

from mnist_pipeline.errors import TrainingDiverged
from mnist_pipeline.model import model_from_bytes
from mnist_pipeline.params import TrainParams
from tasks.fetch import MNIST_SHA256
from tasks.normalize import Splits, normalize_and_split
from tasks.evaluate import predict_probabilities
from mnist_pipeline.params import MODEL_DEFAULTS
from mnist_pipeline.model import build_model, plain_logs, shipped_model, training_targets
from tasks.train import train_model
from tasks.validate import validate_mnist


@pytest.fixture(scope="module")
def small(mnist_mirror) -> Splits:
    raw = {n: gzip.decompress((mnist_mirror / f"{n}.gz").read_bytes()) for n in MNIST_SHA256}
    s = normalize_and_split(validate_mnist(raw)[0], 5000, 42)
    return Splits(s.x_train[:3000], s.y_train[:3000], s.x_val[:500], s.y_val[:500], s.x_test, s.y_test)


def test_the_default_model_is_the_readme_mlp():
    model = build_model("mlp")
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [d.units for d in dense] == [128, 64, 10]
    assert [d.activation.__name__ for d in dense] == ["relu", "relu", "softmax"]
    assert model.count_params() == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert model.optimizer.__class__.__name__ == "Adam" and model.loss == "sparse_categorical_crossentropy"
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.99  # the averaged weights are kept


def test_each_model_has_its_own_defaults_and_the_mlps_are_the_readmes():
    assert MODEL_DEFAULTS["mlp"] == {"epochs": 10, "batch_size": 32, "learning_rate": 0.001}
    assert set(MODEL_DEFAULTS["cnn"]) == {"epochs", "batch_size", "learning_rate"}
    assert MODEL_DEFAULTS["cnn"]["batch_size"] > MODEL_DEFAULTS["mlp"]["batch_size"]


def test_cnn_option_averages_two_networks_that_share_their_first_conv_block():
    model = build_model("cnn", total_steps=1000)
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert kinds[1:3] == ["Reshape", "RandomTranslation"]
    assert kinds.count("Conv2D") == 3 and kinds.count("BatchNormalization") == 5  # one stem, two members
    assert set(model.output) == {"member_0", "member_1", "ensemble"}
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}  # no bfloat16 emulation
    shipped = shipped_model(model)
    assert len(shipped.outputs) == 1 and shipped.output.shape == (None, 10)
    assert shipped.count_params() == model.count_params()
    x = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    outputs = model(x, training=False)
    np.testing.assert_allclose(shipped(x, training=False), (outputs["member_0"] + outputs["member_1"]) / 2, rtol=1e-6)
    assert not np.allclose(outputs["member_0"], outputs["member_1"])  # two networks, not one twice


def test_cnn_members_learn_from_their_own_smoothed_losses_and_the_average_is_only_watched():
    model = build_model("cnn", 1000, {"members": 3})
    assert set(model.output) == {"member_0", "member_1", "member_2", "ensemble"}
    config = model.get_compile_config()
    assert config["loss_weights"] == {"member_0": 1.0, "member_1": 1.0, "member_2": 1.0, "ensemble": 0.0}
    assert {loss["config"]["label_smoothing"] for loss in config["loss"].values()} == {0.1}
    single = build_model("cnn", 1000, {"members": 1})
    assert list(single.output) == ["ensemble"] and shipped_model(single).output.shape == (None, 10)
    targets = training_targets(model, np.array([3, 0], dtype=np.uint8))
    assert set(targets) == set(model.output) and targets["member_0"].tolist()[0] == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]


def test_cnn_experiments_vary_each_members_kernel_and_average_the_weights():
    model = build_model("cnn", 1000, {"members": 3, "member_kernels": (5, 3, 3), "ema_momentum": 0.995})
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.kernel_size for c in convs] == [(5, 5), (5, 5), (3, 3), (3, 3)]  # the stem, then each member's
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.995
    assert not build_model("cnn", 1000).optimizer.use_ema  # the recipe: neither
    with pytest.raises(ValueError, match="2 kernel sizes for 3 members"):
        build_model("cnn", 1000, {"members": 3, "member_kernels": (5, 3)})


@pytest.mark.parametrize("keras_logs", [
    # two or more members: the averaged output's metrics carry its name
    {"loss": 1.1, "ensemble_accuracy": 0.98, "ensemble_cross_entropy": 0.07, "member_0_loss": 0.55,
     "val_loss": 1.0, "val_ensemble_accuracy": 0.99, "val_ensemble_cross_entropy": 0.05},
    # one member (the tuner's members=1): Keras names a single output's metrics plainly
    {"loss": 1.1, "accuracy": 0.98, "cross_entropy": 0.07, "val_loss": 1.0, "val_accuracy": 0.99,
     "val_cross_entropy": 0.05},
])
def test_cnn_curves_are_the_shipped_models_whatever_the_number_of_members(keras_logs):
    assert plain_logs(keras_logs) == {"objective": 1.1, "loss": 0.07, "accuracy": 0.98,
                                      "val_objective": 1.0, "val_loss": 0.05, "val_accuracy": 0.99}
    mlp = {"loss": 0.2, "accuracy": 0.94, "val_loss": 0.1, "val_accuracy": 0.97}
    assert plain_logs(mlp) == mlp


def test_cnn_learning_rate_is_one_cycle_over_the_given_steps():
    import keras

    config = build_model("cnn", total_steps=1000).optimizer.get_config()["learning_rate"]
    schedule = keras.optimizers.schedules.deserialize(config)  # a built-in: saved and loaded with the model
    rates = [float(schedule(step)) for step in (0, 200, 600, 1000)]
    assert rates[0] == pytest.approx(0.0004) and rates[1] == pytest.approx(0.004)  # warm-up to the peak
    assert rates[1] > rates[2] > rates[3] and rates[3] == pytest.approx(0.0, abs=1e-9)  # then down to zero


def test_the_cnn_trains_and_its_stored_model_loads_in_safe_mode(small, local_store):
    # 3 epochs of 24 steps: enough steps for batch norm's moving statistics to forget their start.
    params = TrainParams(model="cnn", epochs=3, batch_size=128, learning_rate=0.004, seed=2)
    result = train_model(small, params, local_store, "run-cnn")
    stored = model_from_bytes(local_store.get("runs/run-cnn/model.keras"), "the cnn")  # safe mode
    probabilities = predict_probabilities(stored, small.x_val)
    np.testing.assert_array_equal(probabilities, predict_probabilities(result.model, small.x_val))
    # Randomly shifted while training only: a second inference pass gives the same answer.
    np.testing.assert_array_equal(probabilities, predict_probabilities(stored, small.x_val))
    assert result.history["val_accuracy"][-1] > 0.8
    # The curves are the stored model's: its accuracy, and plain cross-entropy for its loss (the
    # members' label-smoothed training objective is kept apart).
    loss = -np.log(probabilities[np.arange(len(small.y_val)), small.y_val]).mean()
    assert loss == pytest.approx(result.history["val_loss"][-1], rel=1e-4)
    assert (probabilities.argmax(1) == small.y_val).mean() == pytest.approx(result.history["val_accuracy"][-1])
    assert result.history["val_objective"][-1] > 2 * loss  # two members' smoothed losses, summed
    assert "average of 2 networks" in result.weights


@pytest.mark.parametrize("files,needle", [
    (None, "it is not a .keras file (a zip archive)"),
    ({"metadata.json": "{}"}, "KeyError: \"There is no item named 'config.json' in the archive\""),
    ({"config.json": '{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense"}]}}',
      "metadata.json": "{}"}, "TypeError: Could not locate class 'Sequential'."),
])
def test_a_stored_model_that_does_not_load_is_one_line_naming_its_key_never_a_temporary_path(files, needle):
    """Keras said "File not found: filepath=/tmp/tmpXXXX/model.keras" of a file that was there."""
    import io
    import zipfile

    from mnist_pipeline.errors import UnsafeModel

    data = b"not a zip at all"
    if files is not None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, text in files.items():
                archive.writestr(name, text)
        data = buffer.getvalue()
    with pytest.raises(UnsafeModel) as refused:
        model_from_bytes(data, "runs/run-x/model.keras")
    line = str(refused.value)
    assert line.startswith("runs/run-x/model.keras does not load as a Keras model: ") and needle in line
    assert "\n" not in line and len(line) < 400 and "/tmp" not in line and "tmp" not in line.split(": ", 1)[1]


def test_a_progress_bar_that_cannot_be_updated_is_one_warning_and_the_training_goes_on(small, local_store,
                                                                                      monkeypatch, caplog):
    """Its API call failing (Prefect's retries spent, the server gone) aborted the training."""
    import logging

    import httpx

    from tasks import train

    calls = []

    def refused(*args, **kwargs):
        calls.append(kwargs["progress"])
        raise httpx.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(train, "create_progress_artifact", lambda **kwargs: "artifact-id")
    monkeypatch.setattr(train, "update_progress_artifact", refused)
    params = TrainParams(epochs=3)
    log = logging.getLogger("tests.progress")
    progress = train.ProgressArtifact(log, params)
    with caplog.at_level(logging.WARNING, logger="tests.progress"):
        result = train_model(small, params, local_store, "run-p", on_epoch=lambda e, logs: progress.update(100 * e / 3))
    assert len(result.history["loss"]) == 3 and local_store.exists("runs/run-p/model.keras")
    assert len(calls) == 1 and [r.getMessage() for r in caplog.records] == [
        "the training's progress bar is not updated any more: ConnectError: [Errno 111] Connection refused; "
        "the training goes on"]


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
