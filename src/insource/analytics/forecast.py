"""Daily spend forecasts as sample paths, and a rolling-origin backtest of the same forecaster.

Which method runs depends on how much history there is:
- 14 days or more: statsmodels' `ExponentialSmoothing` (Holt-Winters: additive damped trend, additive weekly
  seasonality), with sample paths simulated by bootstrapping the fit's own residuals;
- 3 to 13 days (or a series that never changes): a least-squares linear trend, with paths drawn from the
  estimates' uncertainty plus Student-t noise;
- fewer than 3 days: no forecast.
Every figure (daily p10/p50/p90, the month's total and its interval) is read off the same paths, so a sum over
days carries the days' correlation. Spend is never negative: paths are clipped at 0.

statsmodels (and numpy) are imported here only: the server never loads this module.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

MIN_DAYS = 3
SEASONAL_DAYS = 14
SEASON = 7
HEURISTIC_DAYS = 10 + 2 * (SEASON // 2)
REPETITIONS = 1000
BACKTEST_ORIGINS = 4
BACKTEST_STEP = 7
MAX_WIDEN = 3.0  # the backtest may widen the model's intervals up to 3×, never narrow them
MIN_CALIBRATION = 14  # backtest days needed before they may widen the intervals

HOLT_WINTERS = "statsmodels ExponentialSmoothing (additive damped trend, additive weekly seasonality)"
LINEAR = "linear trend (least squares)"
NONE = "none (fewer than 3 days of history)"


@dataclass(frozen=True)
class Paths:
    """`values[h, r]`: day h after the history, sample path r (USD, ≥ 0)."""

    method: str
    values: np.ndarray

    def quantiles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """p10, p50 and p90 per day."""
        q = np.percentile(self.values, [10, 50, 90], axis=1)
        return q[0], q[1], q[2]


@dataclass(frozen=True)
class Backtest:
    mape: float | None  # mean absolute percentage error (a fraction) over backtest days with spend
    coverage: float | None  # share of backtest days whose actual lies within p10..p90
    days: int
    widen: float = 1.0  # how much the backtest says the model's intervals must be widened to hold 80%


def forecast(history: np.ndarray, horizon: int, rng: np.random.Generator) -> tuple[Paths, Backtest]:
    """Paths of the next `horizon` days, with intervals widened as far as the backtest on `history` shows the
    model's own were too narrow (never narrowed), and that backtest."""
    check = backtest(history, rng)
    paths = simulate(history, horizon, rng)
    if check.widen > 1.0:
        median = np.median(paths.values, axis=1, keepdims=True)
        paths = Paths(paths.method, np.clip(median + check.widen * (paths.values - median), 0.0, None))
    return paths, check


def simulate(history: np.ndarray, horizon: int, rng: np.random.Generator) -> Paths:
    """Sample paths of the `horizon` days after `history` (one value per day, oldest first)."""
    if len(history) < MIN_DAYS:
        raise ValueError(f"a forecast needs at least {MIN_DAYS} days of history")
    if len(history) >= SEASONAL_DAYS and np.ptp(history) > 0:
        paths = _holt_winters(history, horizon, rng)
        if paths is not None:
            return paths
    return _linear(history, horizon, rng)


def _holt_winters(y: np.ndarray, horizon: int, rng: np.random.Generator) -> Paths | None:
    """None when the fit fails or its paths are not finite (the caller falls back to the linear trend)."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    with warnings.catch_warnings():
        # Optimiser chatter on short or flat series: the fit is still used, or rejected below.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            fit = ExponentialSmoothing(
                y,
                trend="add",
                damped_trend=True,
                seasonal="add",
                seasonal_periods=SEASON,
                # statsmodels' heuristic start needs 10 + 2 × (7 // 2) = 16 days; below that, estimate it
                initialization_method="heuristic" if len(y) >= HEURISTIC_DAYS else "estimated",
            ).fit(use_brute=False)  # the brute-force start grid costs 2/3 of the time for no better fit here
            sims = fit.simulate(
                horizon, anchor="end", repetitions=REPETITIONS, error="add", random_errors="bootstrap", rng=rng
            )
        except (ValueError, np.linalg.LinAlgError):
            return None
    values = np.asarray(sims, dtype=float).reshape(horizon, REPETITIONS)
    if not np.isfinite(values).all():
        return None
    return Paths(HOLT_WINTERS, np.clip(values, 0.0, None))


def _linear(y: np.ndarray, horizon: int, rng: np.random.Generator) -> Paths:
    """Least-squares line through the days; paths add the estimates' uncertainty and Student-t day noise."""
    n = len(y)
    x = np.column_stack([np.ones(n), np.arange(n, dtype=float)])
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    dof = n - 2
    scale = float(np.sqrt(resid @ resid / dof)) if dof > 0 else 0.0
    cov = scale**2 * np.linalg.inv(x.T @ x)
    betas = rng.multivariate_normal(beta, cov, size=REPETITIONS, method="eigh")  # (R, 2)
    days = np.arange(n, n + horizon, dtype=float)[:, None]
    mean = betas[:, 0][None, :] + days * betas[:, 1][None, :]
    noise = scale * rng.standard_t(max(dof, 1), size=(horizon, REPETITIONS)) if scale > 0 else 0.0
    return Paths(LINEAR, np.clip(mean + noise, 0.0, None))


def backtest(
    history: np.ndarray,
    rng: np.random.Generator,
    *,
    origins: int = BACKTEST_ORIGINS,
    step: int = BACKTEST_STEP,
) -> Backtest:
    """Rolling origin: at each of the last `origins` weekly cut-offs, forecast the next `step` days from the
    days before alone (with the method that much history gets), and compare with what was spent."""
    n = len(history)
    cuts = sorted({max(MIN_DAYS, n - step * k) for k in range(1, origins + 1)})
    errors: list[float] = []
    inside: list[bool] = []
    spreads: list[float] = []  # |actual - p50| in units of the interval's half-width on that side
    for cut in cuts:
        if cut >= n:
            continue
        h = min(step, n - cut)
        p10, p50, p90 = simulate(history[:cut], h, rng).quantiles()
        actual = history[cut : cut + h]
        for a, lo, mid, hi in zip(actual, p10, p50, p90, strict=True):
            inside.append(bool(lo <= a <= hi))
            half = (hi - mid) if a >= mid else (mid - lo)
            spreads.append(abs(a - mid) / half if half > 0 else (0.0 if a == mid else MAX_WIDEN))
            if a > 0:
                errors.append(abs(a - mid) / a)
    return Backtest(
        mape=float(np.mean(errors)) if errors else None,
        coverage=float(np.mean(inside)) if inside else None,
        days=len(inside),
        widen=float(np.clip(np.quantile(spreads, 0.8), 1.0, MAX_WIDEN)) if len(spreads) >= MIN_CALIBRATION else 1.0,
    )
