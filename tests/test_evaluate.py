import numpy as np
import pytest

from tasks.evaluate import per_class_metrics, predict_probabilities, wilson_interval
from tasks.train import build_model


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
    model = build_model("mlp", 0.001)
    x = np.random.default_rng(0).random((2500, 28, 28), dtype=np.float32)  # 2.5 batches
    probs = predict_probabilities(model, x, batch_size=1000)
    assert probs.shape == (2500, 10)
    np.testing.assert_allclose(probs, model.predict(x, batch_size=256, verbose=0), rtol=1e-5, atol=1e-6)
