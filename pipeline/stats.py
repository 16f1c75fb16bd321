"""Seed statistics of a table whose rows ran with several seeds: each row's mean, sample standard deviation and
the 95 % t-interval of its mean; the t-interval of the difference of two rows' means (Welch's, which does not
assume equal variances: the seeds of two backbones are independent runs, not pairs); and ranks that claim an
order only where those intervals allow it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95
METHOD = "Student t-interval of each mean; Welch t-interval of each difference of means"


def higher_is_better(metric: str) -> bool:
    """Accuracy, AP, mIoU, PQ: higher; error rates (`*_err`): lower."""
    return not metric.endswith("_err")


def _t(df: float) -> float:
    """The two-sided `CONFIDENCE` quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, df))


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for one seed
    low: float | None  # the t-interval of the mean; None for one seed
    high: float | None

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": [self.low, self.high]
                if self.low is not None else None}


def summarize(values: list[float]) -> Summary:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarize")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Summary(1, mean, None, None, None)
    std = statistics.stdev(values)
    half = _t(len(values) - 1) * std / math.sqrt(len(values))
    return Summary(len(values), mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    mean: float  # mean of a - mean of b
    low: float | None
    high: float | None
    df: float | None

    def better(self, higher_is_better: bool = True) -> str | None:
        """"a" or "b" where the interval of the difference excludes 0 (the direction by `higher_is_better`);
        None where the seeds cannot tell the two apart (or a row has one seed)."""
        if self.low is None:
            return None
        if self.low > 0:
            return "a" if higher_is_better else "b"
        if self.high < 0:
            return "b" if higher_is_better else "a"
        return None


def difference(a: list[float], b: list[float]) -> Difference:
    """Welch's t-interval of mean(a) - mean(b), with the Welch-Satterthwaite degrees of freedom."""
    sa, sb = summarize(a), summarize(b)
    d = sa.mean - sb.mean
    if sa.std is None or sb.std is None:
        return Difference(d, None, None, None)
    va, vb = sa.std ** 2 / sa.n, sb.std ** 2 / sb.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(d, d, d, math.inf)
    df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1))
    half = _t(df) * se
    return Difference(d, d - half, d + half, df)


def ranks(rows: dict[str, list[float]], higher_is_better: bool = True) -> dict[str, tuple[int, int]]:
    """Each row's range of places: (1 + the rows whose difference from it is resolved in their favour,
    the number of rows - those it is resolved better than). A range of one place is a claimed rank; rows whose
    ranges overlap are not ordered by these seeds."""
    out = {}
    for name, values in rows.items():
        above = below = 0
        for other, theirs in rows.items():
            if other == name:
                continue
            verdict = difference(values, theirs).better(higher_is_better)
            above += verdict == "b"
            below += verdict == "a"
        out[name] = (1 + above, len(rows) - below)
    return out


def pairwise(rows: dict[str, list[float]], higher_is_better: bool = True) -> list[dict]:
    """Every pair of rows (in the given order): the difference's interval and which is better, if either."""
    names = list(rows)
    found = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = difference(rows[a], rows[b])
            winner = d.better(higher_is_better)
            found.append({"a": a, "b": b, "difference": d.mean, "ci95": [d.low, d.high] if d.low is not None
                          else None, "df": d.df, "better": {"a": a, "b": b}.get(winner)})
    return found
