"""plots and report: real PNGs, embedded in a self-contained HTML page that says the decision."""

import numpy as np

from mnist_pipeline.registry import GateDecision
from tasks.evaluate import Evaluation, per_class_metrics
from tasks.plots import render_plots
from tasks.report import render_report, summary_markdown


def fake_evaluation(rng):
    y_true = rng.integers(0, 10, 500).astype(np.uint8)
    y_pred = y_true.copy()
    y_pred[:40] = (y_pred[:40] + 1) % 10
    confusion = np.bincount(y_true.astype(int) * 10 + y_pred, minlength=100).reshape(10, 10)
    metrics = {"test_accuracy": 0.92, "test_loss": 0.3, "test_accuracy_ci95": [0.89, 0.94],
               "test_samples": 500, "test_errors": 40, "per_class": per_class_metrics(confusion),
               "confusion_matrix": confusion.tolist()}
    return Evaluation(metrics, y_pred, rng.random(500).astype(np.float32)), y_true


def test_plots_are_pngs_and_the_report_embeds_them_and_escapes_input():
    rng = np.random.default_rng(0)
    evaluation, y_true = fake_evaluation(rng)
    history = {"loss": [0.5, 0.3], "accuracy": [0.8, 0.9], "val_loss": [0.4, 0.35], "val_accuracy": [0.85, 0.88]}
    plots = render_plots(history, evaluation, rng.random((500, 28, 28), dtype=np.float32), y_true)
    assert set(plots) == {"learning_curves.png", "confusion_matrix.png", "sample_predictions.png",
                          "confident_mistakes.png", "per_class_accuracy.png"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000 for png in plots.values())
    decision = GateDecision(False, "promotion blocked: 0.920 < 0.970", 0.97)
    params = {"model": "<script>x</script>", "epochs": 2, "batch_size": 32, "validation_size": 5000}
    profile = {"train_samples": 60000, "test_samples": 10000, "train_pixel_mean": 0.13,
               "test_pixel_mean": 0.13, "train_class_counts": [1] * 10, "test_class_counts": [1] * 10}
    training = {"seconds": 12.3, "weights": "moving average <of> steps"}
    html = render_report("run-1", params, profile, evaluation.metrics, training, decision, plots).decode()
    assert html.count("data:image/png;base64,") == 5
    assert "moving average &lt;of&gt; steps" in html and "NOT PROMOTED" in html and "promotion blocked: 0.920 &lt; 0.970" in html
    assert "<script>x</script>" not in html  # parameters are escaped
    md = summary_markdown("run-1", {"model": "mlp", "epochs": 2, "batch_size": 32}, evaluation.metrics,
                          decision, "file:///r.html")
    assert "**NOT PROMOTED**" in md and "0.9200" in md and "[Full report](file:///r.html)" in md
