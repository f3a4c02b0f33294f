"""The gate: the rule that decides whether a candidate may replace production, and its
explanation. Pure. The flow, `promote` and the report use this one rule; the report shows the
checks it made and its explanation instead of deriving them again.

The rule: the threshold always (test accuracy >= min_accuracy); then the champion rule (no worse
than production by more than max_regression), unless regression is allowed on purpose; when
asked for, accuracy on the ingested datasets' holdout images >= min_new_data_accuracy; and, when
min_class_recall is set, every digit's recall >= it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mnist_pipeline.params import DEFAULT_MAX_REGRESSION
from mnist_pipeline.registry.schema import Production

BLOCKED = "promotion blocked: "  # how every blocked decision's reason starts


@dataclass(frozen=True)
class Check:
    """One comparison the gate made, its numbers to 4 decimals; `ok` False blocks."""

    rule: str  # "threshold" | "champion" | "new_data" | "class_recall" | "approval"
    text: str  # e.g. "0.9790 ≥ 0.9700"
    ok: bool


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # the decision in one line, as logs, history records and the CLI say it
    min_accuracy: float
    production_run_id: str | None = None
    production_accuracy: float | None = None
    checks: tuple[Check, ...] = field(default=())
    explanation: str = ""  # the reason for a reader, in the report's words
    min_class_recall: float | None = None  # the per-digit gate applied, if any

    def to_json(self) -> dict:
        return asdict(self)


def class_recall_check(class_recall: dict[str, float], min_class_recall: float) -> Check:
    """Every digit's recall against the per-digit gate; the text names the digits below it."""
    below = sorted((d for d, r in class_recall.items() if r < min_class_recall), key=int)
    if below:
        digits = ", ".join(f"{d} ({class_recall[d]:.4f})" for d in below)
        plural = "s" if len(below) > 1 else ""
        return Check("class_recall", f"recall of digit{plural} {digits} < {min_class_recall:.4f}", False)
    lowest = min(class_recall, key=lambda d: (class_recall[d], int(d)))
    return Check("class_recall", f"lowest recall {class_recall[lowest]:.4f} (digit {lowest}) ≥ {min_class_recall:.4f}",
                 True)


def gate(accuracy: float, min_accuracy: float, production: Production | None,
         max_regression: float = DEFAULT_MAX_REGRESSION, allow_regression: bool = False,
         new_data_accuracy: float | None = None, min_new_data_accuracy: float | None = None,
         class_recall: dict[str, float] | None = None, min_class_recall: float | None = None) -> GateDecision:
    """The decision for a candidate scoring `accuracy`, against the threshold and the model in
    production (None: nothing is); `new_data_accuracy` (None: nothing ingested) against
    `min_new_data_accuracy` when that is set; `class_recall` (digit -> recall) against
    `min_class_recall` when that is set."""
    prod_id = production.run_id if production else None
    prod_acc = production.test_accuracy if production else None
    above = accuracy >= min_accuracy
    checks = [Check("threshold", f"{accuracy:.4f} {'≥' if above else '<'} {min_accuracy:.4f}", above)]
    explained = f"test accuracy {accuracy:.4f} {'≥' if above else '<'} threshold {min_accuracy:.4f}"
    reason = f"{accuracy:.4f} >= {min_accuracy:.4f}" if above else f"{BLOCKED}{accuracy:.4f} < {min_accuracy:.4f}"
    champion_ok = True
    if prod_acc is not None:
        shortfall = prod_acc - accuracy
        within = shortfall <= max_regression + 1e-12
        champion_ok = within or allow_regression
        text = f"{accuracy:.4f} vs production {prod_acc:.4f} ({-shortfall:+.4f}; allowed regression {max_regression:.4f})"
        checks.append(Check("champion", text + (", regression allowed on purpose" if not within and allow_regression
                                                else ""), champion_ok))
        if above and shortfall <= 0:
            explained += f" and ≥ production {prod_acc:.4f}"
            reason += f" and >= production {prod_acc:.4f}"
        elif above and within:
            explained += f" and within {max_regression:.4f} of production {prod_acc:.4f}"
            reason += f" and within {max_regression:g} of production {prod_acc:.4f}"
        elif above and allow_regression:
            explained += f"; {shortfall:.4f} below production {prod_acc:.4f}, allowed on purpose"
            reason += f"; regression from {prod_acc:.4f} allowed on purpose"
        elif above:
            explained = (f"test accuracy {accuracy:.4f} is {shortfall:.4f} below production {prod_acc:.4f}, "
                         f"more than the allowed {max_regression:.4f}")
            reason = (f"{BLOCKED}{accuracy:.4f} is below production {prod_id} ({prod_acc:.4f}) "
                      f"by more than {max_regression:g}")
    promote = above and champion_ok
    if min_new_data_accuracy is not None:
        check = new_data_check(new_data_accuracy, min_new_data_accuracy)
        checks.append(check)
        if not check.ok:
            said = f"new-data accuracy {new_data_accuracy:.4f} < {min_new_data_accuracy:.4f}"
            reason = f"{reason}; {said}" if not promote else f"{BLOCKED}{said}"
            explained = f"{explained}; and {said}" if not promote else said
            promote = False
    if min_class_recall is not None:
        if class_recall is None:  # a rule that cannot be checked blocks
            raise ValueError("the per-digit gate needs each digit's recall")
        check = class_recall_check(class_recall, min_class_recall)
        checks.append(check)
        if not check.ok:
            said = f"per-digit gate: {check.text}"
            reason = f"{reason}; {said}" if not promote else f"{BLOCKED}{said}"
            explained = f"{explained}; {said}" if not promote else said
            promote = False
    return GateDecision(promote, reason, min_accuracy, prod_id, prod_acc, tuple(checks), explained,
                        min_class_recall=min_class_recall)


def new_data_check(accuracy: float | None, minimum: float) -> Check:
    """Accuracy on the ingested holdout images against `minimum`; with none ingested, nothing to
    hold the candidate to."""
    if accuracy is None:
        return Check("new_data", f"no ingested holdout images: nothing to check against {minimum:.4f}", True)
    above = accuracy >= minimum
    return Check("new_data", f"{accuracy:.4f} {'≥' if above else '<'} {minimum:.4f}", above)
