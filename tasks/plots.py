"""plots: learning curves, test-set errors (confusion matrix), per-class accuracy against the gate,
the most confident mistakes, and sample predictions. Rendered once, headless (Agg), as PNG bytes
keyed by file name; `plot_captions` says what to look at in each, for the report.

Each figure has a builder returning the matplotlib Figure (so tests can read its axes) and the
small decisions in them (epoch ticks, y-range, labels, the errors-only matrix) are pure functions.
"""

from __future__ import annotations

import io
import math

import numpy as np

from tasks.evaluate import Evaluation
from tasks.stage import stage

DPI = 150  # sharp when the report scales a figure to its column, and in print
MISTAKES_SHOWN = 24
SAMPLES_SHOWN = 24
GRID_COLUMNS = 8
RIGHT, WRONG, GATE, NEUTRAL = "#2b6cb0", "#c53030", "#c05621", "#4a5568"

# In report order. The template shows the captions under the figures.
plot_captions: dict[str, str] = {
    "learning_curves.png": (
        "Learning curves: loss and accuracy after each epoch, on the training images and on the "
        "held-out validation images. Look for the validation curve flattening (more epochs would "
        "not help) or turning away from the training curve (overfitting)."),
    "confusion_matrix.png": (
        "Where the test-set errors are: each cell counts the images of the row's digit that were "
        "predicted as the column's. The diagonal (correct, in grey) is left out of the colour "
        "scale, so the darkest red cells are the confusions worth a look; the column on the right "
        "totals each digit's errors."),
    "per_class_accuracy.png": (
        "Accuracy on each digit (recall: the share of that digit's test images classified "
        "correctly) against the gate threshold, which the overall test accuracy must reach. "
        "Digits below the line, in orange, pull the overall accuracy down. With a per-digit gate "
        "(--min-class-recall), its line is drawn too, and a digit below it, in red, blocks the model."),
    "confident_mistakes.png": (
        "The test images the model got wrong while most sure of itself, most confident first: "
        "true digit, prediction and its probability, and the runner-up class with its "
        "probability. A runner-up that is the true digit means the model hesitated in the right "
        "direction; a mislabelled or ambiguous digit here is not the model's fault."),
    "sample_predictions.png": (
        "A random sample of test images with the predicted digit and its probability "
        "(red: wrong), to see what typical inputs look like."),
}


def _png(fig, tight: bool = True) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None, facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.25)


# --- learning curves ------------------------------------------------------------------------

def epoch_ticks(n_epochs: int, max_ticks: int = 12) -> list[int]:
    """Whole epochs only, 1-based, at most `max_ticks` of them: 1..n while they fit, else epoch
    1 and multiples of a round step (2, 5, 10, 20, 25, 50, ...)."""
    if n_epochs <= max_ticks:
        return list(range(1, n_epochs + 1))
    steps = (2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000)
    step = next((s for s in steps if math.ceil(n_epochs / s) + 1 <= max_ticks), steps[-1])
    return [1] + list(range(step, n_epochs + 1, step))


def learning_curves_figure(history: dict[str, list[float]]):
    import matplotlib.pyplot as plt

    n = len(history["loss"])
    epochs = np.arange(1, n + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.7))
    for ax, metric, title in ((axes[0], "loss", "Loss (lower is better)"),
                              (axes[1], "accuracy", "Accuracy (higher is better)")):
        series = [(metric, "training", NEUTRAL, "o-")]
        if f"val_{metric}" in history:
            series.append((f"val_{metric}", "validation", RIGHT, "s-"))
        for key, label, colour, style in series:
            ax.plot(epochs, history[key], style, color=colour, label=label, ms=5 if n > 1 else 8)
        _pad_y(ax, [v for key, *_ in series for v in history[key]])
        _label_last_values(ax, n, [(history[key][-1], colour) for key, _, colour, _ in series])
        ax.set_title(title, loc="left", fontsize=12)
        ax.set_xlabel("epoch", fontsize=10.5)
        ax.set_xticks(epoch_ticks(n))
        ax.set_xlim(0.5, n + 0.5 + 0.15 * n)  # room on the right for the last values
        _style(ax)
        ax.legend(frameon=False, fontsize=9.5)
    if n == 1:
        fig.text(0.5, -0.03, "One epoch: a single point per curve, no trend to read.",
                 ha="center", fontsize=10, color=NEUTRAL)
    fig.tight_layout()
    return fig


def _label_last_values(ax, n: int, last: list[tuple[float, str]]) -> None:
    """The last value of each curve, where the eye ends: what the model was left with. Two values
    closer than a label's height (a model that fits its validation set as well as its training
    set) are pushed apart, the higher one up, instead of printed over each other."""
    low, high = ax.get_ylim()
    close = len(last) == 2 and abs(last[0][0] - last[1][0]) < 0.06 * (high - low)
    top = max(range(len(last)), key=lambda i: last[i][0])
    for i, (value, colour) in enumerate(last):
        shift = (6 if i == top else -6) if close else 0
        ax.annotate(f"{value:.4f}", (n, value), textcoords="offset points", xytext=(7, shift),
                    va="center", fontsize=9.5, color=colour)


def _pad_y(ax, values: list[float]) -> None:
    """A y-range around the values with a margin, also for a single point (matplotlib would
    otherwise pick an arbitrary +-5% around it)."""
    low, high = min(values), max(values)
    margin = max((high - low) * 0.12, abs(high) * 0.01, 1e-3)
    ax.set_ylim(low - margin, high + margin)


# --- test-set errors --------------------------------------------------------------------------

def errors_only(confusion) -> np.ma.MaskedArray:
    """The confusion matrix with its diagonal (the correct predictions) masked: ~1,000 correct
    per class would otherwise set the colour scale and leave 18 errors near white."""
    matrix = np.asarray(confusion)
    return np.ma.masked_array(matrix, mask=np.eye(len(matrix), dtype=bool))


def confusion_figure(confusion):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    matrix = np.asarray(confusion)
    errors = errors_only(matrix)
    k = len(matrix)
    top = max(1, int(errors.max()) if errors.count() else 1)
    fig, ax = plt.subplots(figsize=(5.6, 5.4))
    # No colour bar: every cell carries its count; the colour only draws the eye, on a scale
    # of its own (0 to the largest error count), the diagonal not included.
    ax.imshow(errors, cmap="Reds", vmin=0, vmax=top * 1.1)
    for i in range(k):
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, color="#edf2f7", zorder=2))
        ax.text(i, i, f"{matrix[i, i]:,}", ha="center", va="center", fontsize=7.5,
                color="#718096", zorder=3)
        for j in range(k):
            if i != j and matrix[i, j]:
                dark = matrix[i, j] > 0.5 * top
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=10.5,
                        color="white" if dark else "black", fontweight="bold" if dark else None)
        row_errors = int(matrix[i].sum() - matrix[i, i])
        ax.text(k - 0.15, i, f"{row_errors}", ha="left", va="center", fontsize=10.5,
                color=WRONG, fontweight="bold")
    ax.text(k - 0.15, -0.8, "errors", ha="left", va="center", fontsize=9.5, color=WRONG)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.tick_params(length=0, labelsize=10.5)
    ax.set_xlabel("predicted digit", fontsize=10.5)
    ax.set_ylabel("true digit", fontsize=10.5)
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_title("Test-set errors: true digit (row) predicted as (column)", loc="left",
                 fontsize=12, pad=16)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig


# --- per-class accuracy -----------------------------------------------------------------------

def per_class_ylim(recalls: list[float], min_accuracy: float) -> tuple[float, float]:
    """A y-range that shows every bar's top and the gate line, with room below the lowest: the
    bars differ by tenths of a percent, so starting at 0 would hide them, and starting at the
    lowest bar would hide the gate."""
    low = min(min(recalls), min_accuracy)
    span = max(1.0 - low, 0.01)
    return max(0.0, low - 0.35 * span), 1.0 + 0.08 * span


def per_class_figure(per_class: dict[str, dict[str, float]], min_accuracy: float,
                     overall_accuracy: float | None = None, min_class_recall: float | None = None):
    """`min_class_recall`: the per-digit gate, when set: a digit below it blocks the model (red)."""
    import matplotlib.pyplot as plt

    digits = sorted(per_class, key=int)
    recall = [per_class[d]["recall"] for d in digits]
    fig, ax = plt.subplots(figsize=(5.6, 3.9))
    colours = [WRONG if min_class_recall is not None and r < min_class_recall else GATE if r < min_accuracy else RIGHT
               for r in recall]
    ax.bar(range(len(digits)), recall, color=colours, width=0.72)
    for c, v in enumerate(recall):
        ax.text(c, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8.5, zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85})
    ax.set_ylim(*per_class_ylim(recall, min(min_accuracy, min_class_recall if min_class_recall is not None else 1)))
    ax.axhline(min_accuracy, color=GATE, ls="--", lw=1.6,
               label=f"gate threshold {min_accuracy:.4f} (for the overall accuracy)")
    if min_class_recall is not None:
        ax.axhline(min_class_recall, color=WRONG, ls="-.", lw=1.6,
                   label=f"per-digit gate {min_class_recall:.4f}: a digit below it blocks the model")
    if overall_accuracy is not None:
        ax.axhline(overall_accuracy, color=NEUTRAL, ls=":", lw=1.4,
                   label=f"this run's overall accuracy {overall_accuracy:.4f}")
    ax.set_xticks(range(len(digits)), digits, fontsize=10.5)
    ax.tick_params(axis="y", labelsize=9.5)
    ax.set_xlim(-0.6, len(digits) - 0.4)
    ax.set_xlabel("digit", fontsize=10.5)
    ax.set_ylabel("recall", fontsize=10.5)
    ax.set_title("Accuracy per digit, against the gate", loc="left", fontsize=12)
    _style(ax)
    ax.grid(axis="x", visible=False)
    # below the axes: labels on the lines themselves collide when the two values are close
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False, fontsize=9.5)
    return fig


# --- digits -----------------------------------------------------------------------------------

def format_probability(p: float) -> str:
    """Three decimals that never round to a certainty the model did not have: 0.99996 is
    ">0.999", not "1.000"."""
    if p >= 0.9995:
        return ">0.999"
    if p < 0.0005:
        return "<0.001"
    return f"{p:.3f}"


def format_runner_up_probability(p: float) -> str:
    """Three decimals, or two significant digits below 0.001 (3.2e-05): for a confident mistake
    the runner-up's probability is tiny, and its size is what tells one mistake from another."""
    return f"{p:.3f}" if p >= 0.0005 else f"{p:.1e}"


def mistake_label(true: int, predicted: int, confidence: float,
                  runner_up: int | None = None, runner_up_confidence: float | None = None) -> str:
    """"true 5, said 3" / "p 0.981" / "2nd: 5 (0.017)"."""
    lines = [f"true {true}, said {predicted}", f"p {format_probability(confidence)}"]
    if runner_up is not None:
        lines.append(f"2nd: {runner_up} ({format_runner_up_probability(runner_up_confidence)})")
    return "\n".join(lines)


def digit_grid_figure(images: np.ndarray, titles: list[str], colours: list[str], empty_text: str = ""):
    """Digits in rows of GRID_COLUMNS, each under its title. The cells are placed by arithmetic,
    not by tight_layout, which took about half of all the plotting time (docs/performance.md)."""
    import matplotlib.pyplot as plt

    cols = GRID_COLUMNS
    rows = max(1, math.ceil(len(images) / cols))
    lines = max([t.count("\n") + 1 for t in titles], default=1)
    row_in, title_in = 1.25 + 0.2 * lines, 0.1 + 0.2 * lines  # inches: a row, its title's share
    fig = plt.figure(figsize=(11, rows * row_in))
    image_h = (row_in - title_in) / row_in / rows * 0.97
    for k, (img, text, colour) in enumerate(zip(images, titles, colours)):
        row, col = divmod(k, cols)
        ax = fig.add_axes(((col + 0.05) / cols, 1 - (row + 1) / rows + 0.03 / rows, 0.9 / cols, image_h))
        ax.axis("off")
        ax.imshow(img, cmap="gray_r", vmin=0, vmax=1 if img.dtype.kind == "f" else 255)
        ax.set_title(text, fontsize=9, color=colour, linespacing=1.15)
    if not len(images):
        fig.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=12)
    return fig


def confident_mistakes(evaluation: Evaluation, y_test: np.ndarray, limit: int = MISTAKES_SHOWN) -> np.ndarray:
    """Indices of the wrong predictions, most confident first."""
    wrong = np.flatnonzero(evaluation.y_pred != y_test)
    return wrong[np.argsort(-evaluation.confidence[wrong], kind="stable")][:limit]


def _mistakes_png(evaluation: Evaluation, x_test: np.ndarray, y_test: np.ndarray) -> bytes:
    worst = confident_mistakes(evaluation, y_test)
    has_runner_up = evaluation.runner_up is not None
    titles = [mistake_label(int(y_test[i]), int(evaluation.y_pred[i]), float(evaluation.confidence[i]),
                            int(evaluation.runner_up[i]) if has_runner_up else None,
                            float(evaluation.runner_up_confidence[i]) if has_runner_up else None)
              for i in worst]
    return _png(digit_grid_figure(x_test[worst], titles, [WRONG] * len(worst),
                                  "No mistakes on the test set."), tight=False)


def _samples_png(evaluation: Evaluation, x_test: np.ndarray, y_test: np.ndarray, seed: int) -> bytes:
    sample = np.random.default_rng(seed).choice(len(y_test), min(SAMPLES_SHOWN, len(y_test)), replace=False)
    titles, colours = [], []
    for i in sample:
        p = format_probability(float(evaluation.confidence[i]))
        if evaluation.y_pred[i] == y_test[i]:
            titles.append(f"{y_test[i]}  (p {p})")
            colours.append("black")
        else:
            titles.append(f"true {y_test[i]}, said {evaluation.y_pred[i]}\n(p {p})")
            colours.append(WRONG)
    return _png(digit_grid_figure(x_test[sample], titles, colours), tight=False)


def render_plots(history: dict, evaluation: Evaluation, x_test: np.ndarray, y_test: np.ndarray,
                 min_accuracy: float, seed: int = 0, min_class_recall: float | None = None) -> dict[str, bytes]:
    """PNG bytes by file name, in the order of `plot_captions`. `min_accuracy` is the gate
    threshold actually applied, `min_class_recall` the per-digit gate (both drawn on the
    per-class chart)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    metrics = evaluation.metrics
    return {
        "learning_curves.png": _png(learning_curves_figure(history)),
        "confusion_matrix.png": _png(confusion_figure(metrics["confusion_matrix"])),
        "per_class_accuracy.png": _png(per_class_figure(metrics["per_class"], min_accuracy,
                                                        metrics.get("test_accuracy"), min_class_recall)),
        "confident_mistakes.png": _mistakes_png(evaluation, x_test, y_test),
        "sample_predictions.png": _samples_png(evaluation, x_test, y_test, seed),
    }


@stage("plots")
def plots_task(history: dict, evaluation: Evaluation, x_test: np.ndarray, y_test: np.ndarray,
               min_accuracy: float, min_class_recall: float | None = None) -> dict[str, bytes]:
    return render_plots(history, evaluation, x_test, y_test, min_accuracy, min_class_recall=min_class_recall)
