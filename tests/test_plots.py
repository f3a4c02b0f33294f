"""plots: what a reader of the figures relies on: whole-epoch ticks, errors visible beside ~1,000
correct per class, the gate drawn where the bars are, mistakes labelled with more than p=1.00."""

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tasks.evaluate import Evaluation, per_class_metrics  # noqa: E402
from tasks.plots import (confident_mistakes, confusion_figure, epoch_ticks, errors_only,  # noqa: E402
                         format_probability, learning_curves_figure, mistake_label,
                         per_class_figure, per_class_ylim, plot_captions, render_plots)

pytestmark = pytest.mark.unit  # no server, no training: `make test-unit`


def history_of(epochs: int) -> dict:
    rng = np.random.default_rng(epochs)
    return {k: list(rng.uniform(lo, hi, epochs)) for k, lo, hi in
            (("loss", 0.02, 0.3), ("accuracy", 0.9, 0.99), ("val_loss", 0.08, 0.12), ("val_accuracy", 0.96, 0.98))}


def drawn_tick_labels(ax) -> list[str]:
    ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]


@pytest.mark.parametrize("epochs, expected", [(1, ["1"]), (12, [str(e) for e in range(1, 13)])])
def test_learning_curves_tick_whole_epochs_only(epochs, expected):
    fig = learning_curves_figure(history_of(epochs))
    try:
        for ax in fig.axes:
            assert drawn_tick_labels(ax) == expected  # not 0.96 ... 1.04, not 1.2, 1.4, ...
            low, high = ax.get_xlim()
            assert low < 1 and high > epochs  # every epoch's point is inside the axes
    finally:
        plt.close(fig)


def test_epoch_ticks_stay_whole_and_few_for_long_runs():
    assert epoch_ticks(1) == [1]
    assert epoch_ticks(10) == list(range(1, 11))
    assert epoch_ticks(30) == [1, 5, 10, 15, 20, 25, 30]
    for n in (13, 47, 100, 500):
        ticks = epoch_ticks(n)
        assert ticks[0] == 1 and ticks[-1] <= n and len(ticks) <= 12
        assert all(isinstance(t, int) for t in ticks) and ticks == sorted(set(ticks))


def confusion_with_a_few_errors() -> np.ndarray:
    confusion = np.diag([972, 1130, 1008, 991, 969, 859, 939, 994, 948, 980])
    confusion[5, 3], confusion[7, 2], confusion[4, 9] = 18, 13, 6
    return confusion


def test_errors_only_matrix_masks_the_diagonal():
    errors = errors_only(confusion_with_a_few_errors())
    assert errors.mask.tolist() == np.eye(10, dtype=bool).tolist()
    assert errors.max() == 18  # the scale is set by the worst confusion, not by ~1,000 correct


def test_confusion_figure_colours_errors_on_their_own_scale_and_writes_every_count():
    fig = confusion_figure(confusion_with_a_few_errors())
    try:
        ax = fig.axes[0]
        image = ax.images[0]
        assert image.get_array().mask[3, 3] and not image.get_array().mask[5, 3]
        assert 18 <= image.get_clim()[1] < 30  # 18 errors are near the top of the scale, not white
        cells = [t.get_text() for t in ax.texts if t.get_position()[0] < 9.5 and t.get_position()[1] > -0.5]
        assert {"18", "13", "6", "1,130", "972"} <= set(cells)
        assert len(cells) == 13  # 10 diagonal + 3 errors: empty cells stay blank, no "0" clutter
        totals = [t.get_text() for t in ax.texts if t.get_position()[0] > 9.5 and t.get_position()[1] > -0.5]
        assert totals == ["0", "0", "0", "0", "6", "18", "0", "13", "0", "0"]  # errors per true digit
    finally:
        plt.close(fig)


@pytest.mark.parametrize("recalls, gate", [([0.99] * 9 + [0.925], 0.97), ([0.975, 0.98] * 5, 0.97),
                                           ([0.995] * 10, 0.99)])
def test_per_class_range_shows_every_bar_and_the_gate(recalls, gate):
    low, high = per_class_ylim(recalls, gate)
    assert low < min(recalls) and low < gate and high >= 1.0
    assert 1.0 - low < 0.2  # zoomed in: a bar chart from 0 would make 0.975 and 0.99 look equal


def test_per_class_figure_draws_and_labels_the_gate_line():
    per_class = per_class_metrics(confusion_with_a_few_errors())
    fig = per_class_figure(per_class, 0.97, overall_accuracy=0.9790)
    try:
        ax = fig.axes[0]
        gate_lines = [line for line in ax.get_lines() if list(line.get_ydata()) == [0.97, 0.97]]
        assert len(gate_lines) == 1
        legend = " / ".join(t.get_text() for t in ax.get_legend().get_texts())
        assert "gate threshold 0.9700" in legend and "0.9790" in legend
        low, high = ax.get_ylim()
        assert low < 0.97 and low < min(pc["recall"] for pc in per_class.values())
    finally:
        plt.close(fig)


def test_mistake_labels_carry_three_decimals_and_the_runner_up():
    label = mistake_label(5, 3, 0.9812, runner_up=5, runner_up_confidence=0.0171)
    assert label.splitlines() == ["true 5, said 3", "p 0.981", "2nd: 5 (0.017)"]
    near_certain = mistake_label(9, 4, 0.999968, runner_up=9, runner_up_confidence=0.0000324)
    assert "p >0.999" in near_certain and "2nd: 9 (3.2e-05)" in near_certain
    assert "1.00" not in near_certain  # never a certainty the model did not claim
    assert format_probability(0.5) == "0.500" and format_probability(0.00001) == "<0.001"


def fake_evaluation(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 10, n).astype(np.uint8)
    y_pred = y_true.copy()
    y_pred[:30] = (y_pred[:30] + 3) % 10
    confidence = rng.uniform(0.5, 1.0, n).astype(np.float32)
    runner_up = ((y_pred + 1) % 10).astype(np.uint8)
    runner_up[:30] = y_true[:30]
    confusion = np.bincount(y_true.astype(int) * 10 + y_pred, minlength=100).reshape(10, 10)
    metrics = {"test_accuracy": float((y_true == y_pred).mean()), "test_loss": 0.2,
               "test_accuracy_ci95": [0.9, 0.95], "test_samples": n, "test_errors": 30,
               "per_class": per_class_metrics(confusion), "confusion_matrix": confusion.tolist()}
    ev = Evaluation(metrics, y_pred, confidence, runner_up, (1 - confidence) / 2)
    return ev, y_true, rng.random((n, 28, 28), dtype=np.float32)


def test_confident_mistakes_are_wrong_predictions_most_confident_first():
    ev, y_true, _ = fake_evaluation()
    worst = confident_mistakes(ev, y_true, limit=10)
    assert (ev.y_pred[worst] != y_true[worst]).all()
    assert list(ev.confidence[worst]) == sorted(ev.confidence[ev.y_pred != y_true], reverse=True)[:10]


def test_render_plots_gives_a_png_for_every_caption_in_report_order():
    ev, y_true, x = fake_evaluation()
    plots = render_plots(history_of(3), ev, x, y_true, min_accuracy=0.97)
    assert list(plots) == list(plot_captions)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000 for png in plots.values())
    for name, caption in plot_captions.items():
        assert not re.search(r"\.png\b", caption) and len(caption.split()) > 15, name


def test_the_per_digit_gate_is_drawn_and_the_digits_below_it_stand_out():
    recall = [0.99, 0.99, 0.98, 0.98, 0.98, 0.963, 0.98, 0.967, 0.97, 0.97]
    per_class = {str(d): {"recall": r} for d, r in enumerate(recall)}
    fig = per_class_figure(per_class, 0.97, 0.979, min_class_recall=0.968)
    try:
        ax = fig.axes[0]
        lines = {round(line.get_ydata()[0], 4): line.get_label() for line in ax.get_lines()}
        assert lines[0.968].startswith("per-digit gate 0.9680") and lines[0.97].startswith("gate threshold 0.9700")
        colours = [matplotlib.colors.to_hex(bar.get_facecolor()) for bar in ax.patches]
        assert [d for d, c in enumerate(colours) if c == "#c53030"] == [5, 7]  # below the per-digit gate: red
        assert ax.get_ylim()[0] < 0.963
    finally:
        plt.close(fig)
    without = per_class_figure(per_class, 0.97, 0.979)
    try:
        assert not [line for line in without.axes[0].get_lines() if "per-digit" in line.get_label()]
    finally:
        plt.close(without)
