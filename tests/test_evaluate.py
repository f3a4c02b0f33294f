import numpy as np
import pytest

from tasks.evaluate import evaluate_model, per_class_metrics, predict_probabilities, top_two, wilson_interval
from mnist_pipeline.model import build_model

pytestmark = pytest.mark.unit  # no server, no training: `make test-unit`


def test_wilson_interval_known_values():
    low, high = wilson_interval(9738, 10000)
    assert low == pytest.approx(0.97045, abs=1e-4) and high == pytest.approx(0.97675, abs=1e-4)
    low, high = wilson_interval(10000, 10000)
    assert high == pytest.approx(1.0) and 0.9995 < low < 1.0  # sound at the edge, unlike p +- z*se


def test_per_class_metrics_from_a_confusion_matrix():
    confusion = np.zeros((10, 10), int)
    np.fill_diagonal(confusion, 10)
    confusion[3, 5] = 5  # five 3s predicted as 5
    m = per_class_metrics(confusion)
    assert m["3"]["recall"] == pytest.approx(10 / 15, abs=1e-5) and m["3"]["precision"] == 1.0
    assert m["5"]["precision"] == pytest.approx(10 / 15, abs=1e-5) and m["5"]["recall"] == 1.0
    assert m["3"]["f1"] == pytest.approx(2 * (10 / 15) / (1 + 10 / 15), rel=1e-4)
    assert m["0"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 10}


def test_batched_eager_prediction_matches_keras_predict():
    model = build_model("mlp")
    x = np.random.default_rng(0).random((2500, 28, 28), dtype=np.float32)  # 2.5 batches
    probs = predict_probabilities(model, x, batch_size=1000)
    assert probs.shape == (2500, 10)
    np.testing.assert_allclose(probs, model.predict(x, batch_size=256, verbose=0), rtol=1e-5, atol=1e-6)


def test_top_two_classes_with_ties_resolved_like_argmax():
    probs = np.array([[0.1, 0.7, 0.2, 0, 0, 0, 0, 0, 0, 0],
                      [0.4, 0.0, 0.0, 0.4, 0.2, 0, 0, 0, 0, 0],  # tie: argmax says 0
                      [0, 0, 0, 0, 0, 0, 0, 0, 0.001, 0.999]])
    first, second = top_two(probs)
    assert first.tolist() == probs.argmax(axis=1).tolist() == [1, 0, 9]
    assert second.tolist() == [2, 3, 8]


class FixedProbabilities:
    """A stand-in model: image i (all pixels = i) gets row i of a fixed probability table."""

    def __init__(self, probs):
        self.probs = probs

    def __call__(self, images, training=False):
        return self.probs[np.asarray(images)[:, 0, 0].astype(int)]


def test_evaluation_keeps_the_runner_up_class_and_its_probability():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(10, 0.3), 300).astype(np.float32)
    images = np.repeat(np.arange(300, dtype=np.float32), 28 * 28).reshape(300, 28, 28)
    labels = rng.integers(0, 10, 300).astype(np.uint8)
    ev = evaluate_model(FixedProbabilities(probs), images, labels)
    ranked = np.sort(probs, axis=1)
    assert ev.runner_up.dtype == np.uint8 and ev.runner_up_confidence.dtype == np.float32
    np.testing.assert_array_equal(ev.y_pred, probs.argmax(axis=1))
    np.testing.assert_allclose(ev.confidence, ranked[:, -1])
    np.testing.assert_allclose(ev.runner_up_confidence, ranked[:, -2])
    assert (ev.runner_up != ev.y_pred).all()
    np.testing.assert_allclose(probs[np.arange(300), ev.runner_up], ranked[:, -2])
    assert ev.metrics["test_errors"] == int((ev.y_pred != labels).sum())
