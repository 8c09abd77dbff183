"""``algorithm="auto"`` on the CPU: a one-time measured choice between the direct and im2col
kernels per pass and shape, cached like ``torch.backends.cudnn.benchmark``.

The first call with a new key runs each algorithm twice (the first run compiles and warms the
caches, the second is timed) and returns the faster one's result; later calls with that key run
only the winner. Problems under AUTOTUNE_MIN_MACS use :func:`heuristic` without timing: both
kernels finish them in well under a millisecond, and timing noise would decide.
"""
import time

# multiply-adds below which auto trusts the heuristic instead of timing
AUTOTUNE_MIN_MACS = 1 << 21
# per-output-pixel reduction length (C/groups * KH * KW) below which the direct kernel is chosen
DIRECT_MAX_REDUCTION = 32

CHOICES = {}


def heuristic(weight_shape) -> str:
    """direct for short per-pixel reductions (depthwise, 1-channel input), im2col otherwise."""
    _, Cg, KH, KW = weight_shape
    return "direct" if Cg * KH * KW < DIRECT_MAX_REDUCTION else "im2col"


def run(key, macs: int, weight_shape, call):
    """Return ``call(algorithm)`` for the algorithm chosen for ``key`` (chosen once, cached)."""
    alg = CHOICES.get(key)
    if alg is not None:
        return call(alg)
    if macs < AUTOTUNE_MIN_MACS:
        CHOICES[key] = alg = heuristic(weight_shape)
        return call(alg)
    best = None
    for alg in ("direct", "im2col"):
        call(alg)
        t0 = time.perf_counter()
        out = call(alg)
        elapsed = time.perf_counter() - t0
        if best is None or elapsed < best[0]:
            best = (elapsed, alg, out)
    CHOICES[key] = best[1]
    return best[2]


def chosen(pass_name: str, *key) -> str:
    """The algorithm auto ran for a pass ("forward", "backward_input", "backward_weight") and
    key, or None when that shape has not run yet."""
    return CHOICES.get((pass_name,) + key)
