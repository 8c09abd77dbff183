"""``algorithm="auto"`` on the CPU: a one-time measured choice between the direct and im2col
kernels per pass and shape, cached like ``torch.backends.cudnn.benchmark``.

The first call with a new key runs each algorithm once to compile and warm it, then times them
alternately AUTOTUNE_ROUNDS times and keeps each one's best time (robust to a busy machine);
it returns the winner's result, and later calls with that key run only the winner.
Problems under AUTOTUNE_MIN_MACS use :func:`heuristic` without timing: both
kernels finish them in well under a millisecond, and timing noise would decide.
"""
import time

# multiply-adds below which auto trusts the heuristic instead of timing
AUTOTUNE_MIN_MACS = 1 << 21
# per-output-pixel reduction length (C/groups * KH * KW) below which the direct kernel is chosen
DIRECT_MAX_REDUCTION = 32

# timed runs per algorithm on a new key; the minimum of each is compared
AUTOTUNE_ROUNDS = 3

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
    algorithms = ("direct", "im2col")
    times = {alg: float("inf") for alg in algorithms}
    for alg in algorithms:
        call(alg)
    for _ in range(AUTOTUNE_ROUNDS):
        for alg in algorithms:
            t0 = time.perf_counter()
            out = call(alg)
            times[alg] = min(times[alg], time.perf_counter() - t0)
    CHOICES[key] = alg = min(algorithms, key=times.get)
    return out if alg == algorithms[-1] else call(alg)


def key(pass_name: str, input_shape, weight_shape, stride, padding, dilation, groups: int,
        dtype_name: str) -> tuple:
    """The cache key of one conv pass ("forward", "backward_input", "backward_weight"): the one
    place it is built, for the kernels that fill CHOICES and for callers that read it."""
    return (pass_name, tuple(input_shape), tuple(weight_shape), tuple(stride), tuple(padding),
            tuple(dilation), groups, dtype_name)


def chosen(key: tuple) -> str:
    """The algorithm auto ran for ``key`` (see :func:`key`), or None before that shape ran."""
    return CHOICES.get(key)
