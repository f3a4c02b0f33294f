"""plots: learning curves, confusion heatmap, sample predictions, confident mistakes, per-class
accuracy. Rendered once, headless (Agg), as PNG bytes keyed by file name."""

from __future__ import annotations

import io

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.evaluate import Evaluation


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def learning_curves(history: dict[str, list[float]]) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, metric, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        ax.plot(epochs, history[metric], "o-", label="training")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], "s-", label="validation")
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


def confusion_heatmap(confusion: list[list[int]]) -> bytes:
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7, 6))
    sns.heatmap(np.asarray(confusion), annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax,
                annot_kws={"size": 8})
    ax.set(title="Confusion matrix (test set)", xlabel="predicted", ylabel="true")
    return _png(fig)


def digit_grid(images: np.ndarray, titles: list[str], colors: list[str], title: str) -> bytes:
    import matplotlib.pyplot as plt

    cols = 8
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, img, text, color in zip(np.atleast_1d(axes).ravel(), images, titles, colors):
        ax.imshow(img, cmap="gray_r")
        ax.set_title(text, fontsize=8, color=color)
    fig.suptitle(title)
    return _png(fig)


def per_class_bars(per_class: dict[str, dict[str, float]]) -> bytes:
    import matplotlib.pyplot as plt

    recall = [per_class[str(c)]["recall"] for c in range(10)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(10), recall, color="tab:blue")
    ax.set(title="Per-class accuracy (recall) on the test set", xlabel="digit", ylabel="accuracy",
           xticks=range(10), ylim=(max(0.0, min(recall) - 0.05), 1.0))
    for c, v in enumerate(recall):
        ax.text(c, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    return _png(fig)


def render_plots(history: dict, evaluation: Evaluation, x_test: np.ndarray, y_test: np.ndarray,
                 seed: int = 0) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    y_pred, conf = evaluation.y_pred, evaluation.confidence
    sample = np.random.default_rng(seed).choice(len(y_test), 24, replace=False)
    wrong = np.flatnonzero(y_pred != y_test)
    worst = wrong[np.argsort(-conf[wrong])][:24]
    return {
        "learning_curves.png": learning_curves(history),
        "confusion_matrix.png": confusion_heatmap(evaluation.metrics["confusion_matrix"]),
        "sample_predictions.png": digit_grid(
            x_test[sample], [f"true {y_test[i]} / pred {y_pred[i]}" for i in sample],
            ["black" if y_pred[i] == y_test[i] else "red" for i in sample],
            "Sample test predictions (red: wrong)"),
        "confident_mistakes.png": digit_grid(
            x_test[worst], [f"true {y_test[i]} / pred {y_pred[i]}\n p={conf[i]:.2f}" for i in worst],
            ["red"] * len(worst), "Most confident mistakes"),
        "per_class_accuracy.png": per_class_bars(evaluation.metrics["per_class"]),
    }


@task(name="plots", cache_policy=NO_CACHE)
def plots_task(history: dict, evaluation: Evaluation, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, bytes]:
    return render_plots(history, evaluation, x_test, y_test)
