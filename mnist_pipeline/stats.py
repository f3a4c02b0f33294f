"""McNemar's exact test: do two classifiers differ in accuracy on the same test images?"""

from __future__ import annotations

import math

import numpy as np


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """(right only by A, right only by B, two-sided exact p-value).

    Only the discordant pairs carry information; under "no difference" each is A's or B's with
    probability 1/2, so the count is Binomial(b + c, 1/2)."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError("both runs must be evaluated on the same test images")
    b = int(np.count_nonzero(correct_a & ~correct_b))
    c = int(np.count_nonzero(~correct_a & correct_b))
    n = b + c
    if n == 0:
        return b, c, 1.0
    k = min(b, c)
    # log-space sum: exact and safe for n in the thousands
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                 for i in range(k + 1)]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return b, c, min(1.0, 2.0 * tail)
