"""Contention models: a lock's throughput and waits on more CPUs than the host has.

The lock model is the birth-death Markov chain of Boyd-Wickizer, Kaashoek,
Morris and Zeldovich, "Non-scalable locks are dangerous" (Linux Symposium
2012), as its summaries state it (the paper is not in this repository's
reference material; the tests check the chain against its own closed forms).
Over ``n`` CPUs, state ``k`` is the number of CPUs waiting for or holding the
lock (0..n). A CPU outside the lock asks for it after a mean of ``a`` cycles,
so the chain moves up at rate ``(n - k) / a``; the holder finishes and hands
over at rate ``1 / S(k)``, ``S(k) = s + h(k)``: ``s`` cycles in the critical
section, ``h(k)`` the handoff to the next holder with ``k`` CPUs in the
system. Detailed balance gives ``P_k``; the lock serves ``X = sum_k P_k / S(k)``
acquisitions per cycle, and ``sum_k P_k (n - k)`` is the speedup over one CPU
outside the lock. The handoff by lock (``c``: one cache-line transfer between
two CPUs, measured by ``pingpong``):

- ``ticket``: ``h(k) = c k / 2`` for ``k >= 2`` (the paper's form: the release
  invalidates every waiter's copy and the waiters re-read the line one at a
  time; the next holder is on average halfway), ``h(1) = 0`` (nobody to hand to).
- ``mcs``: ``h(k) = c`` for ``k >= 2``: the holder writes its successor's node,
  one transfer whatever the queue.
- ``tas``: ``h(k) = c (k - 1)`` for ``k >= 2``: every spinner sees the word free
  and tries its exchange, and each exchange takes the line (the testbed's own
  statement of "grows with the spinners"). The releaser's barging and the
  backoff's idle lock are not in the chain: barging reorders who is served,
  not how fast, and is reported as unfairness by the runs, not predicted.

Waits. A CPU that asks for the lock finds ``k`` others ahead with the
arrival-theorem probability ``pi_k ~ P_k (n - k)``; it waits for ``k``
services, each exponential (the chain's own assumption) with the mean
``S(k + 1)`` of the state it joined. The mean wait is ``sum_k pi_k k S(k + 1)``
and the wait's distribution a mixture of Erlang laws, from which the p99.

Closed forms the tests check: with ``s = 0`` and no handoff a lock is never
contended (``P_0 = 1``, ``X = n / a``, no wait); with ``a = 0`` it is always
held (``P_n = 1``, ``X = 1 / S(n)``, every wait ``(n - 1) S(n)``); on one CPU
``X = 1 / (a + s)``; with ``h = 0`` the chain is the machine-repairman queue,
``P_k ~ n! / (n - k)! (s / a)**k``.

The Universal Scalability Law (Gunther), ``X(N) = l N / (1 + s (N - 1) +
k N (N - 1))``, is fitted to measured throughput at three or more
concurrency levels (``fit_usl``): ``l`` from the one-CPU point, ``s`` and ``k``
by least squares, both kept >= 0.

Limits, said wherever a prediction is printed (``LIMITS``): arrivals are
Poisson, while the testbed's hypercalls map in bursts; ``locked``'s critical
section is bimodal (a short slot search, or a wrap's TLB flush and garbage
harvest), and the chain only uses its mean; one ``c`` for every pair of CPUs
(a many-socket machine pays more across sockets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("ticket", "mcs", "tas")

LIMITS = ("the chain assumes Poisson arrivals, while hypercalls map in bursts (--burst maps back to back)",
          "locked's critical section is bimodal (a slot search, or a wrap's flush and garbage harvest): "
          "the chain uses its mean, so waits behind a wrap are understated",
          "one cache-line transfer cost c for every pair of CPUs: a machine with several sockets pays more "
          "across them",
          "the per-vCPU designs (lockless, percpu, kmap-local) take no lock: their prediction is the per-op cost "
          "and the flush rate (each full flush ticks the shared TLB clock, one transfer when another CPU ticked "
          "it last)",
          "tas: barging and backoff are not modelled (the runs report the unfairness)")


@dataclass(frozen=True)
class Lock:
    """The chain's inputs, in cycles: ``a`` between one CPU's acquisitions outside the lock, ``s`` held,
    ``c`` one cache-line transfer; ``kind`` the handoff (``KINDS``)."""
    kind: str
    a: float
    s: float
    c: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown lock kind {self.kind!r}; one of {', '.join(KINDS)}")
        if min(self.a, self.s, self.c) < 0:
            raise ValueError(f"negative input: a={self.a} s={self.s} c={self.c}")


def handoff(kind: str, k, c: float) -> np.ndarray:
    """``h(k)``: cycles to hand the lock on with ``k`` CPUs waiting or holding (0 for k <= 1)."""
    k = np.asarray(k, dtype=float)
    if kind == "ticket":
        h = c * k / 2
    elif kind == "mcs":
        h = np.full_like(k, c)
    else:
        h = c * (k - 1)
    return np.where(k >= 2, h, 0.0)


def service(lock: Lock, k) -> np.ndarray:
    """``S(k) = s + h(k)``: mean cycles from one holder's acquisition to the next's."""
    return lock.s + handoff(lock.kind, k, lock.c)


def chain(lock: Lock, n: int) -> np.ndarray:
    """``P_0..P_n``: the stationary distribution of the chain on ``n`` CPUs."""
    if n < 1:
        raise ValueError(f"n = {n}: at least one CPU")
    if lock.a == 0:
        return np.eye(n + 1)[n]                       # always asked for: always held, all n in
    k = np.arange(1, n + 1)
    with np.errstate(divide="ignore"):
        # P_k / P_{k-1} = lambda_{k-1} / mu_k = (n - k + 1) / a * S(k)
        logs = np.log(n - k + 1.0) - math.log(lock.a) + np.log(service(lock, k))
    logp = np.concatenate([[0.0], np.cumsum(logs)])
    logp -= logp.max()
    p = np.exp(logp)
    return p / p.sum()


def throughput(lock: Lock, n: int) -> float:
    """Acquisitions per cycle the lock serves on ``n`` CPUs."""
    p = chain(lock, n)
    k = np.arange(1, n + 1)
    s = service(lock, k)
    if lock.s == 0:                                   # held for no time: never in the way
        return n / lock.a if lock.a > 0 else math.inf
    return float(np.sum(p[1:] / s))


def speedup(lock: Lock, n: int) -> float:
    """``sum_k P_k (n - k)``: CPUs outside the lock, on average (the paper's speedup)."""
    p = chain(lock, n)
    return float(np.sum(p * (n - np.arange(n + 1))))


def arrivals(lock: Lock, n: int) -> np.ndarray:
    """``pi_0..pi_{n-1}``: what an arriving CPU finds (arrival theorem: ``P_k (n - k)``)."""
    p = chain(lock, n)
    if lock.a == 0:
        return np.eye(n)[n - 1]
    w = p[:n] * (n - np.arange(n))
    return w / w.sum()


def mean_wait(lock: Lock, n: int) -> float:
    """Mean cycles an acquisition waits before it holds the lock."""
    pi = arrivals(lock, n)
    k = np.arange(n)
    return float(np.sum(pi * k * service(lock, k + 1)))


def wait_cdf(lock: Lock, n: int, t: float) -> float:
    """P(wait <= t cycles): a mixture over k ahead of Erlang(k, mean S(k + 1) each)."""
    pi = arrivals(lock, n)
    if n == 1 or t <= 0:
        return float(pi[0]) if t >= 0 else 0.0
    k = np.arange(1, n)
    scale = service(lock, k + 1)
    with np.errstate(divide="ignore"):
        x = np.where(scale > 0, t / np.where(scale > 0, scale, 1.0), np.inf)
    # Erlang(k) CDF at x = 1 - Poisson(x) CDF at k - 1
    j = np.arange(n - 1)
    logfact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n)))])[: n - 1]
    finite = np.isfinite(x) & (x > 0)
    xs = np.where(finite, x, 1.0)
    logterm = -xs[:, None] + j[None, :] * np.log(xs)[:, None] - logfact[None, :]
    terms = np.where(j[None, :] < k[:, None], np.exp(logterm), 0.0)
    erlang = np.where(finite, 1.0 - np.minimum(terms.sum(axis=1), 1.0), np.where(np.isinf(x), 1.0, 0.0))
    return float(pi[0] + np.sum(pi[1:] * erlang))


def wait_quantile(lock: Lock, n: int, q: float = 0.99) -> float:
    """The q-quantile of the wait, in cycles (bisection on ``wait_cdf``)."""
    if wait_cdf(lock, n, 0.0) >= q:
        return 0.0
    hi = max(1.0, float(np.max(service(lock, np.arange(1, n + 1))))) * max(n, 1)
    while wait_cdf(lock, n, hi) < q:
        hi *= 2
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if wait_cdf(lock, n, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-6 * hi:
            break
    return hi


def sample_waits(lock: Lock, n: int, size, rng: np.random.Generator) -> np.ndarray:
    """Waits (cycles) drawn from the model's distribution, for sums over a hypercall's acquisitions."""
    pi = arrivals(lock, n)
    k = rng.choice(n, size=size, p=pi)
    scale = service(lock, k + 1)
    out = np.zeros(np.shape(k))
    busy = k > 0
    out[busy] = rng.gamma(k[busy], scale[busy])
    return out


def collapse(curve: list[float]) -> int | None:
    """The CPU count (1-based) past which throughput falls for good, or None if it never does.

    The peak of the curve counts as a collapse only when the curve ends more than 1% below it
    (a plateau, as an MCS lock's, is saturation, not collapse): the testbed's own threshold.
    """
    peak = int(np.argmax(curve))
    if peak == len(curve) - 1 or curve[-1] >= 0.99 * curve[peak]:
        return None
    return peak + 1


def usl(n, lam: float, sigma: float, kappa: float):
    n = np.asarray(n, dtype=float)
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def fit_usl(ns, xs) -> dict:
    """The USL fitted to throughput ``xs`` measured at ``ns`` CPUs (three levels or more, one of them 1).

    ``lam`` is the one-CPU throughput; ``sigma`` and ``kappa`` solve ``lam n / X - 1 = sigma (n - 1) +
    kappa n (n - 1)`` by least squares, each kept >= 0 (the best of the four sign patterns).
    """
    ns, xs = np.asarray(ns, dtype=float), np.asarray(xs, dtype=float)
    if len(set(ns.tolist())) < 3 or 1 not in ns:
        raise ValueError("the USL needs throughput at three or more CPU counts, one of them 1")
    lam = float(np.mean(xs[ns == 1]))
    y = lam * ns / xs - 1
    cols = np.stack([ns - 1, ns * (ns - 1)], axis=1)
    best = None
    for use in ((0, 1), (0,), (1,), ()):
        coef = np.zeros(2)
        if use:
            sol, *_ = np.linalg.lstsq(cols[:, list(use)], y, rcond=None)
            coef[list(use)] = sol
        if np.any(coef < 0):
            continue
        err = float(np.sum((cols @ coef - y) ** 2))
        if best is None or err < best[0] - 1e-15:
            best = (err, coef)
    sigma, kappa = (float(v) for v in best[1])
    pred = usl(ns, lam, sigma, kappa)
    return {"lam": lam, "sigma": sigma, "kappa": kappa,
            "residuals_pct": [float(v) for v in 100 * (pred - xs) / xs]}


def fit_handoff(kind: str, a: float, s: float, ns, xs, c_hint: float) -> dict:
    """The handoff cost ``c`` that best explains acquisitions per cycle ``xs`` at ``ns`` CPUs (some > 1).

    ``a`` and ``s`` stay as measured on one CPU; ``c`` minimises the squared relative error by
    golden-section search on [0, 64 * c_hint + max(a, s)].
    """
    pts = [(int(n), float(x)) for n, x in zip(ns, xs) if n > 1]
    if not pts:
        raise ValueError("fitting c needs throughput at two or more CPUs")

    def err(c):
        lk = Lock(kind, a, s, c)
        return sum(((throughput(lk, n) - x) / x) ** 2 for n, x in pts)

    lo, hi = 0.0, 64 * max(c_hint, 1.0) + max(a, s)
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = err(x1), err(x2)
    for _ in range(200):
        if f1 < f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = err(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = err(x2)
        if hi - lo < 1e-6 * max(1.0, hi):
            break
    c = (lo + hi) / 2
    lk = Lock(kind, a, s, c)
    return {"c": c, "residuals_pct": [100 * (throughput(lk, n) - x) / x for n, x in pts]}
