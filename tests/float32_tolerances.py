"""Float32 tolerances for the whole suite, derived from float32 arithmetic (issue 10).

The library computes in float32 on TensorFlow's CPU kernels (Eigen, oneDNN), which pick their
vector width, blocking and use of FMA, and with them the order of every sum, per CPU (AVX2,
AVX-512, AMX, ...). So a float32 result may move by a few ulps from one x86 CPU to another, and a
tolerance fitted to the rounding of the machine a test was written on fails on the next one:
rtol=1e-6 on a log-sum-exp at temperature 0.05 failed on an Intel Xeon with AVX-512/AMX. The
bounds below hold for any summation order. Each test that uses one also has to fail on a real
bug: its comment (or an assertion next to it) says what a plausible bug changes, far more.

Units. EPS = 2^-23 ~ 1.19e-7 is float32's machine epsilon (the spacing of floats in [1, 2)): an
ulp of x is at most EPS |x|, and a correctly rounded operation (+ - * /, sqrt) has relative error
at most U = EPS / 2. TensorFlow's float32 rsqrt, exp and log are not correctly rounded; over 1e6
arguments they stayed within 2, 1.3 and 2.4 ulps, and FUNCTION_ULPS = 4 bounds them.

Bounds (first order in EPS; Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed.,
ch. 3-4):

1. A sum of k terms in ANY order (sequential, pairwise, blocked, with or without FMA) is off by
   at most (k - 1) U sum|x_i|; a dot product of k terms by k U sum|x_i y_i|; a mean adds the
   division's U. `reduction_rtol(k) = k U` bounds all three relative to sum|terms| (to the result
   itself when all terms have one sign). k = 1000 gives 6e-5: this is the bound that does not
   depend on the CPU, however loose.
2. `l2_normalize` then a dot product (every cosine in the losses and TSTR), vectors of dimension
   d: the sum of squares is off by d U relative; rsqrt halves that and adds FUNCTION_ULPS ulps;
   the product adds U. Each normalised component is thus off by (d/2 + 1) U + FUNCTION_ULPS EPS
   relative, and the dot product adds d U sum|u_i v_i| <= d U (Cauchy-Schwarz). In all,
   `cosine_atol(d) = (d + 1 + 2 FUNCTION_ULPS) EPS` absolute (25 EPS = 3.0e-6 for d = 16).
3. A logit cos / tau also carries the rounding of the quotient and of tau itself (U / tau each):
   `logit_atol(tau, d) = (cosine_atol(d) + EPS) / tau`. The error is the cosine's, magnified by
   1 / tau: 6e-5 at tau = 0.05, d = 16. This is what a relative tolerance of 1e-6 on a loss of
   ~1.9 ignored.
4. A log-sum-exp term lse(l) - l_target over k logits of magnitude <= L. Logit errors of at most
   delta move it by at most 2 delta (lse is 1-Lipschitz in the max-norm, the target counts once
   more). Its own rounding, as computed (max + log(sum(exp(l - max)))): the k differences l - max
   (U 2L each, through exp: EPS L), exp (FUNCTION_ULPS EPS), the sum of k positive terms
   ((k - 1) U), log (FUNCTION_ULPS ulps of log k), adding the max back (U (L + log k)) and
   subtracting the target (U (2 L + log k)): `logsumexp_term_atol(L, k, delta)`.
   For a contrastive term (L = 1 / tau): `contrastive_term_atol(tau, d, k)`, 1.3e-4 at
   tau = 0.05, d = 16, k = 9, dominated by 2 logit_atol. A loss averages such terms (in stages:
   a mean per video, then over the batch, times a weight): bound 1 for m terms, relative to
   their magnitudes, each at most 2 L + log k (with the "paper" denominator a term can be
   negative, so not relative to the loss): `contrastive_loss_atol(tau, d, k, m, max_weight)`,
   1.9e-4 at tau = 0.05, d = 16, k = 9, m = 22. That is the worst case: the Xeon's error in
   issue 10 was 3.5e-6, 50 times less, and a wrong count of negatives moves those losses by
   log(7 / 6) = 0.15, 800 times more.
5. Softmax probabilities from logits spread over a range g (max - min): the exponent is off by
   U g, exp by FUNCTION_ULPS ulps, the sum of C terms by (C - 1) U and the quotient by U:
   `softmax_rtol(C, g)` relative, on every probability however small.
6. sum_c p_c log(p_c / q_c) (KL, JS): with p, q off by at most a relative r, each log is off by
   r + FUNCTION_ULPS EPS |log| (absolute), hence `divergence_atol(p, q, r)` =
   sum_c p_c (2 r + FUNCTION_ULPS EPS (|log p_c| + |log q_c|)) + the sum's rounding. It is
   absolute: a divergence of two close distributions is a small difference of large terms, and
   no relative tolerance on it is justified.
7. A whole network computed two ways in float32 (graph vs eager, other batch sizes or replicas,
   native vs subsampled strides, SavedModel vs Keras): a layer of fan-in k rounds each output by
   at most k U sum|w x| (bound 1), but errors of random-sign terms add up like a random walk,
   ~ sqrt(k) U of the output (Higham sec. 2.8). Summed over the layers, sum sqrt(k) U is 2.6e-5
   for the tests' R3D-18 at width 1/8 (20 convolutions, k <= 27 * 64 = 1728) and for R3D-50 at
   width 1/16 (53 convolutions, k <= 384). `NETWORK_RTOL = 1e-4`, applied at the scale of the
   output (`network_tolerance`): a near-zero output is not more accurate than its layer.
   This one is an estimate, not a bound; the bugs those tests look for (wrong weights, strides,
   batching, loss scaling) change the outputs by percent, not 1e-4.
8. A short chain of correctly rounded operations (a learning rate rounded to float32, a float64
   score read as float32, a sum of three terms, an exact fraction k / n): m operations are off
   by at most m U relative; FEW_ROUNDINGS = 16 U ~ 9.5e-7 covers 16.

Comparing two float32 computations (rather than float32 against a float64 reference) adds both
sides' errors: twice the bound.
"""
from __future__ import annotations

import math

import numpy as np

EPS = 2.0**-23                  # float32 machine epsilon, 1.19e-7
U = EPS / 2                     # unit roundoff: one correctly rounded operation
FUNCTION_ULPS = 4               # TensorFlow's float32 rsqrt / exp / log, measured <= 2.4 ulps
FEW_ROUNDINGS = 16 * U          # 9.5e-7: at most 16 correctly rounded operations (bound 8)
NETWORK_RTOL = 1e-4             # a small network computed two ways (estimate 7)


def reduction_rtol(k: int) -> float:
    """Bound 1: a sum, dot product or mean of k float32 terms in any order, relative to sum|terms|."""
    return k * U


def cosine_atol(d: int) -> float:
    """Bound 2: absolute error of a float32 cosine through `l2_normalize` and a dot product."""
    return (d + 1 + 2 * FUNCTION_ULPS) * EPS


def logit_atol(temperature: float, d: int) -> float:
    """Bound 3: absolute error of a float32 logit cos(u, v) / temperature."""
    return (cosine_atol(d) + EPS) / temperature


def logsumexp_term_atol(max_abs_logit: float, k: int, logit_error: float = 0.0) -> float:
    """Bound 4: absolute error of lse(l) - l_target over k logits |l| <= max_abs_logit, each off by <= logit_error."""
    log_k = math.log(k)
    own_rounding = (
        max_abs_logit * EPS                              # l - max, through exp
        + FUNCTION_ULPS * EPS                            # exp
        + (k - 1) * U                                    # the sum of the k exponentials
        + FUNCTION_ULPS * EPS * log_k                    # log
        + U * (max_abs_logit + log_k)                    # + max
        + U * (2 * max_abs_logit + log_k)                # - target
    )
    return float(2 * logit_error + own_rounding)


def contrastive_term_atol(temperature: float, d: int, k: int) -> float:
    """Bound 4 for -log(h(a, p) / sum h) with h = exp(cos / temperature) over k candidates in dimension d."""
    return logsumexp_term_atol(1.0 / temperature, k, logit_atol(temperature, d))


def contrastive_loss_atol(temperature: float, d: int, k: int, terms: int, max_weight: float = 1.0) -> float:
    """Bound 4 for a loss averaging `terms` contrastive terms (and stage divisions), each weighted <= max_weight."""
    largest_term = 2.0 / temperature + math.log(k)
    return max_weight * (contrastive_term_atol(temperature, d, k) + reduction_rtol(terms + 1) * largest_term)


def softmax_rtol(num_classes: int, logit_range: float) -> float:
    """Bound 5: relative error of every float32 softmax probability, logits spread over `logit_range`."""
    return float(U * logit_range + FUNCTION_ULPS * EPS + (num_classes - 1) * U + U)


def served_probability_atol(logits) -> float:
    """|p - p'| for the softmax probabilities of a network computed two ways (a SavedModel's graph
    against eager Keras, or one batch against another): logits within estimate 7 at their scale move
    each probability by at most 2 p delta <= 2 delta (p <= 1), plus the softmax's own rounding
    (bound 5). logits: [..., C], any one of the two computations'."""
    logits = np.asarray(logits, np.float64)
    return float(2 * NETWORK_RTOL * np.abs(logits).max()) + softmax_rtol(logits.shape[-1], np.ptp(logits, axis=-1).max())


def divergence_atol(p, q, probability_rtol: float, floor: float = 1e-7) -> float:
    """Bound 6: absolute error of float32 sum_c p_c log(p_c / q_c), the largest over the rows.

    p, q: [B, C] the exact (float64) probabilities; each float32 probability is off by at most
    `probability_rtol` relative. The library clips probabilities to `floor` inside the logs.
    """
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    log_p, log_q = np.abs(np.log(np.clip(p, floor, 1))), np.abs(np.log(np.clip(q, floor, 1)))
    logs = p * (2 * probability_rtol + FUNCTION_ULPS * EPS * (log_p + log_q))
    terms = p * (log_p + log_q)                          # bound on |p (log p - log q)|
    per_row = logs.sum(-1) + reduction_rtol(p.shape[-1] + 1) * terms.sum(-1)
    return float(per_row.max())


def network_tolerance(desired, rtol: float = NETWORK_RTOL) -> dict:
    """Estimate 7 as assert_allclose keywords: `rtol`, and the same at the scale of the largest output."""
    return {"rtol": rtol, "atol": rtol * float(np.max(np.abs(desired)))}


def assert_within(actual, desired, bound, what: str = "") -> None:
    """|actual - desired| <= bound elementwise (bound broadcasts), with the worst element in the message."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, f"{what}: shapes {actual.shape} != {desired.shape}"
    excess = np.abs(actual - desired) - np.broadcast_to(np.asarray(bound, np.float64), actual.shape)
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(excess), excess.shape))
    assert excess[worst] <= 0, (
        f"{what}: |actual - desired| exceeds the float32 bound by {excess[worst]:.3g} at {worst}: "
        f"actual {float(actual[worst])!r}, desired {float(desired[worst])!r}"
    )
