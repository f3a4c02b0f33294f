"""report.html: one clear verdict with the threshold that applied, the comparison with production,
a reproducibility block, captions that say what to look at, and nothing loaded from elsewhere."""

import html as html_lib
import re

import numpy as np
import pytest

from mnist_pipeline.registry import GateDecision
from tasks.evaluate import Evaluation, per_class_metrics
from tasks.plots import plot_captions, render_plots
from mnist_pipeline import registry
from tasks.report import (ReportInput, comparison_view, decision_view, parameter_rows, plural, render_report,
                          timing_rows, verdict)

pytestmark = pytest.mark.unit  # no server, no training: `make test-unit`

COMMIT = "eee6e0ca8a009c61ecbd0047f9539a3da85330b3"
SHA = {"train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
       "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"}


def synthetic_run(accuracy_errors: int, seed: int = 0):
    """500 synthetic test images with `accuracy_errors` mistakes, and their Evaluation."""
    rng = np.random.default_rng(seed)
    y_true = np.repeat(np.arange(10, dtype=np.uint8), 50)
    y_pred = y_true.copy()
    wrong = rng.choice(500, accuracy_errors, replace=False)
    y_pred[wrong] = (y_true[wrong] + 3) % 10
    confusion = np.bincount(y_true.astype(int) * 10 + y_pred, minlength=100).reshape(10, 10)
    accuracy = float((y_true == y_pred).mean())
    metrics = {"test_accuracy": accuracy, "test_loss": 0.11, "test_accuracy_ci95": [accuracy - 0.01, accuracy + 0.01],
               "test_samples": 500, "test_errors": accuracy_errors, "per_class": per_class_metrics(confusion),
               "confusion_matrix": confusion.tolist()}
    confidence = rng.uniform(0.6, 1.0, 500).astype(np.float32)
    ev = Evaluation(metrics, y_pred, confidence, ((y_pred + 1) % 10).astype(np.uint8), (1 - confidence) / 2)
    return ev, y_true, rng.random((500, 28, 28), dtype=np.float32)


@pytest.fixture(scope="module")
def plots():
    ev, y_true, x = synthetic_run(15)
    history = {"loss": [0.3], "accuracy": [0.92], "val_loss": [0.1], "val_accuracy": [0.968]}
    return render_plots(history, ev, x, y_true, min_accuracy=0.97)


def report_input(plots, *, accuracy: float, decision: dict, comparison=None, epochs=1, **overrides) -> ReportInput:
    ev, _, _ = synthetic_run(15)
    metrics = dict(ev.metrics, test_accuracy=accuracy)
    params = {"epochs": epochs, "batch_size": 32, "model": "mlp", "min_accuracy": None, "max_regression": 0.005,
              "allow_regression": False, "validation_size": 5000, "seed": 42, "learning_rate": 0.001}
    fields = dict(
        run_id="49e3c54d-847e-4577-a9ef-51d7aff336bb", params=params,
        profile={"train_samples": 60000, "test_samples": 10000, "train_pixel_mean": 0.13066,
                 "test_pixel_mean": 0.13251, "train_class_counts": [6000] * 10, "test_class_counts": [1000] * 10},
        metrics=metrics,
        history={k: [v] * epochs for k, v in (("loss", 0.3), ("accuracy", 0.92), ("val_loss", 0.1), ("val_accuracy", 0.968))},
        training={"seconds": 2.1, "weights": "moving average over the training steps (momentum 0.99)",
                  "model_summary": 'Model: "mnist_mlp"\n dense (Dense)   (None, 128)   100,480\nTotal params: 109,386',
                  "parameters": 109386},
        decision=decision,
        provenance={"git_commit": COMMIT, "versions": {"python": "3.11.7", "keras": "3.15.1"},
                    "dataset_sha256": SHA, "started_at": "2026-11-25T10:37:02.123456+00:00",
                    "timings_s": {"fetch": 0.2, "train": 2.5, "peak_rss_mb_after": {"fetch": 310, "train": 905}}},
        plots=plots, comparison=comparison)
    fields.update(overrides)
    return ReportInput(**fields)


def champion(run_id: str, accuracy: float) -> registry.Production:
    return registry.Production(run_id=run_id, test_accuracy=accuracy, model_key=f"runs/{run_id}/model.keras",
                               model_sha256="0" * 64, promoted_at="2026-11-25T10:00:00+00:00")


def decided(accuracy: float, production: registry.Production | None = None, **options) -> dict:
    """The report's view of the gate's own decision (mnist_pipeline/registry/gate.py)."""
    return decision_view(registry.gate(accuracy, 0.97, production, **options))


def blocked_decision() -> dict:
    return decided(0.9698)


def body_text(html: str, model_summary: bool = True) -> str:
    """What a reader sees: the body without tags, entities decoded, whitespace collapsed;
    without the Keras model summary if asked (its "(None, 128)" shapes are Keras's own)."""
    body = html.split("<body>", 1)[1]
    if not model_summary:
        body = re.sub(r'<pre class="summary">.*?</pre>', " ", body, flags=re.S)
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))


def test_a_blocked_run_has_one_verdict_with_the_applied_threshold(plots):
    html = render_report(report_input(plots, accuracy=0.9698, decision=blocked_decision())).decode()
    text = body_text(html, model_summary=False)
    assert html.count('class="headline"') == 1
    assert text.count("Not promoted") == 1 and text.count("NOT PROMOTED") == 0
    assert "promotion blocked" not in text  # the headline says it; the reason does not repeat it
    assert "test accuracy 0.9698 < threshold 0.9700" in text  # not the gate's "0.970 < 0.970"
    assert "0.970 < 0.970" not in text
    assert "None" not in text  # min_accuracy=None shows the threshold that applied
    assert "0.9700 (not set for this run" in text
    assert "1 epoch " in text and "1 epochs" not in text


def test_the_report_embeds_everything_and_loads_nothing(plots):
    html = render_report(report_input(plots, accuracy=0.9698, decision=blocked_decision())).decode()
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert len(sources) == len(plots) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in html and "<script" not in html and "@import" not in html and "url(" not in html


def test_figures_carry_human_captions_not_file_names(plots):
    html = render_report(report_input(plots, accuracy=0.9698, decision=blocked_decision())).decode()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, re.S)
    assert len(captions) == 5
    assert not any(c.strip().endswith(".png") for c in captions)
    assert "diagonal" in html and plot_captions["per_class_accuracy.png"][:40] in html


def test_the_reproducibility_block_shows_commit_versions_hashes_timings_and_model(plots):
    text = body_text(render_report(report_input(plots, accuracy=0.9698, decision=blocked_decision())).decode())
    assert COMMIT in text
    for name, sha in SHA.items():
        assert f"{name} {sha}" in text
    assert "keras 3.15.1" in text and "2026-11-25 10:37:02 UTC" in text
    assert "train 2.50 905" in text and "total 2.70" in text
    assert 'Model: "mnist_mlp"' in text and "109,386 trainable parameters" in text


def comparison(better: str, worse: str) -> dict:
    recall = {str(d): {"production": 0.97, "candidate": 0.97} for d in range(10)}
    recall[better]["candidate"] = 0.99
    recall[worse]["candidate"] = 0.95
    return {"production_run_id": "3972e4fb-9a11-43b6-9b2d-54907c9122a7", "production_accuracy": 0.9772,
            "candidate_accuracy": 0.9790, "only_candidate_right": 107, "only_production_right": 89,
            "mcnemar_p": 0.2251, "per_class_recall": recall}


def test_a_promoted_run_compares_with_production_class_by_class(plots):
    decision = decided(0.9790, champion("3972e4fb-9a11-43b6-9b2d-54907c9122a7", 0.9772))
    html = render_report(report_input(plots, accuracy=0.9790, decision=decision, epochs=12,
                                      comparison=comparison(better="3", worse="5"))).decode()
    text = body_text(html)
    assert html.count('class="headline"') == 1 and "Promoted to production" in text
    assert "test accuracy 0.9790 ≥ threshold 0.9700 and ≥ production 0.9772" in text
    assert "107 images are right only by this run and 89 images only by production" in text
    assert "p = 0.225" in text and "not significant" in text
    better = re.findall(r'class="pill better">(\d)', html)
    worse = re.findall(r'class="pill worse">(\d)', html)
    assert better == ["3"] and worse == ["5"]
    assert re.search(r'<tr class="worse"><td>5</td><td>0.9700</td><td>0.9500</td>\s*<td class="delta">-0.0200</td>', html)
    assert "12 epochs" in text


def test_without_predictions_of_production_the_report_says_so(plots):
    decision = decided(0.9698, champion("3972e4fb-9a11-43b6-9b2d-54907c9122a7", 0.9772))
    text = body_text(render_report(report_input(plots, accuracy=0.9698, decision=decision)).decode())
    assert "Compared with production" in text and "mnist-pipeline compare" in text


def test_the_verdict_explains_the_champion_rule_with_four_decimals():
    decision = decided(0.9801, champion("p", 0.9905), max_regression=0.005)
    assert decision["reason"] == "promotion blocked: 0.9801 is below production p (0.9905) by more than 0.005"
    v = verdict(decision)
    assert v["reason"] == "test accuracy 0.9801 is 0.0104 below production 0.9905, more than the allowed 0.0050"
    checks = decision["checks"]
    assert [(c["rule"], c["ok"]) for c in checks] == [("threshold", True), ("champion", False)]
    assert checks[1]["text"] == "0.9801 vs production 0.9905 (-0.0104; allowed regression 0.0050)"


def test_an_allowed_regression_is_explained_as_such():
    decision = decided(0.9801, champion("p", 0.9905), max_regression=0.005, allow_regression=True)
    assert decision["promoted"] and verdict(decision)["reason"] == (
        "test accuracy 0.9801 ≥ threshold 0.9700; 0.0104 below production 0.9905, allowed on purpose")
    assert decision["checks"][1]["text"].endswith(", regression allowed on purpose") and decision["checks"][1]["ok"]


def test_a_reason_the_numbers_do_not_explain_is_shown_as_the_gate_gave_it():
    decision = {"promoted": False, "min_accuracy": 0.97, "production_run_id": None, "production_accuracy": None,
                "reason": "promotion blocked: production kept changing (5 conditional writes refused)"}
    v = verdict(decision)
    assert v["reason"] == "production kept changing (5 conditional writes refused)" and not v["promoted"]


def test_comparison_view_orders_changes_and_counts_images():
    view = comparison_view(comparison(better="3", worse="5"), {str(d): {"support": 1000} for d in range(10)})
    assert [r["digit"] for r in view["better"]] == ["3"] and [r["digit"] for r in view["worse"]] == ["5"]
    assert view["rows"][5]["images"] == -20 and view["rows"][0]["change"] == "same"
    assert view["p_text"] == "0.225" and not view["significant"]


def test_parameters_timings_and_plurals():
    rows = dict(parameter_rows({"min_accuracy": None, "epochs": 1}, 0.97))
    assert rows["min_accuracy"].startswith("0.9700 (not set") and rows["epochs"] == "1"
    assert dict(parameter_rows({"min_accuracy": 0.98}, 0.98))["min_accuracy"] == "0.9800"
    timings = timing_rows({"fetch": 0.5, "train": 10.0, "peak_rss_mb_after": {"train": 900}})
    assert [(t["stage"], t["seconds"], t["peak_mb"]) for t in timings] == [
        ("fetch", 0.5, None), ("train", 10.0, 900), ("total", 10.5, None)]
    assert plural(1, "epoch") == "1 epoch" and plural(12, "epoch") == "12 epochs"
    assert plural(10000, "image") == "10,000 images"


def test_input_is_escaped(plots):
    inp = report_input(plots, accuracy=0.9698, decision=blocked_decision())
    inp.params["model"] = "<script>x</script>"
    inp.training["weights"] = "moving average <of> steps"
    html = render_report(inp).decode()
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "moving average &lt;of&gt; steps" in html


def test_the_report_says_what_data_the_model_saw_what_changed_and_its_new_data_accuracy(plots):
    decision = decision_view(registry.gate(0.975, 0.97, champion("7d1c0a5e", 0.97), new_data_accuracy=0.8612,
                                           min_new_data_accuracy=0.9))
    new_data = {"accuracy": 0.8612, "images": 245, "versions": [1, 2],
                "per_version": {"1": {"accuracy": 0.9, "images": 200}, "2": {"accuracy": 0.6889, "images": 45}},
                "production_before": {"run_id": "7d1c0a5e-0000", "accuracy": 0.7515}}
    ingested = [{"version": 1, "sha256": "1" * 64, "train": 800, "holdout": 200, "note": "scans of school forms",
                 "created_at": "2026-12-01T09:30:00+00:00"},
                {"version": 2, "sha256": "2" * 64, "train": 180, "holdout": 45, "note": "", "created_at": "2026-12-03T10:00:00"}]
    inp = report_input(plots, accuracy=0.975, decision=decision)
    inp.metrics = dict(inp.metrics, new_data=new_data)
    inp.profile = dict(inp.profile, train_samples=60980, mnist_train_samples=60000, ingested=ingested)
    inp.provenance = dict(inp.provenance, source_sha256="5" * 64, data_versions=[{"version": 1, "sha256": "1" * 64}],
                          changes_since_production=["data: version 2 added (180 training images)"])
    text = body_text(render_report(inp).decode())
    assert "New data: 0.8612 < 0.9000" in text  # the gate's check, named
    text = re.sub(r" ([;).])", r"\1", re.sub(r"\( ", "(", text))  # the spaces tags leave in punctuation
    assert ("245 holdout images of the ingested dataset versions 1, 2, never trained on: this run 0.8612; "
            "production's model (run 7d1c0a5e) on the same images 0.7515 (+0.1097). The gate decides on MNIST's "
            "test images and on these.") in text
    assert "2 45 0.6889" in text
    assert "55,980 (of 60,980; 5,000 held out for validation)" in text
    assert "MNIST 60,000 (its 10,000 test images)" in text and "1 800 200 2026-12-01 09:30 scans of school forms" in text
    assert "Changed since production's run data: version 2 added (180 training images)" in text
    assert f"data version 1 {'1' * 64}" in text and f"source files SHA-256 {'5' * 64}" in text


def test_a_run_without_ingested_data_shows_none_of_it(plots):
    text = body_text(render_report(report_input(plots, accuracy=0.9698, decision=blocked_decision())).decode())
    assert "New data" not in text and "Ingested besides MNIST" not in text and "data version" not in text


def test_the_per_digit_gate_and_the_approval_are_named_in_the_checks(plots):
    from tasks import approval

    ev, _, _ = synthetic_run(15)
    recall = {d: m["recall"] for d, m in ev.metrics["per_class"].items()}
    lowest = min(recall.values())
    gate = registry.gate(0.97, 0.97, None, class_recall=recall, min_class_recall=lowest + 0.001)
    text = body_text(render_report(report_input(plots, accuracy=0.97, decision=decision_view(gate))).decode(), False)
    assert "Not promoted" in text and "Per-digit gate: recall of digit" in text
    assert f"below the per-digit gate {lowest + 0.001:.4f}: such a digit blocks the model" in text
    assert "min_class_recall None" not in text
    waiting = approval.awaiting(registry.gate(0.98, 0.97, None), 3600)
    text = body_text(render_report(report_input(plots, accuracy=0.98, decision=decision_view(waiting))).decode())
    assert "Not promoted" in text and "Approval: waiting for a person's approval in the Prefect UI, until" in text
    approved = approval.with_verdict(registry.gate(0.98, 0.97, None),
                                     approval.Verdict(True, "approved by ann: ok", "ann"))
    text = body_text(render_report(report_input(plots, accuracy=0.98, decision=decision_view(approved))).decode())
    assert "Promoted to production" in text and "Approval: approved by ann: ok" in text
