"""The one-dimensional Winograd transforms of F(2,3) and F(4,3), written out.

F(m, 3) with alpha = m + 2 points computes m outputs of a 3-tap correlation from alpha inputs
with alpha multiplies: y = A^T [(G g) * (B^T d)]. The 2-D algorithm F(m x m, 3 x 3) applies each
matrix along both axes (``convkit.kernels.reference.winograd_tile`` has the matrices, with
Lavin & Gray's formula). Here each product with a constant matrix is a function of scalars
returning a tuple, so the loops that apply it over a row of pixels (``tiles``) vectorize:

    input_m        B^T d      alpha -> alpha     (forward and weight gradient: input tiles)
    output_m       A^T M      alpha -> m         (forward: transformed products -> outputs)
    filter_m       G g        3 -> alpha         (forward: the filter)
    grad_out_m     A gy       m -> alpha         (weight gradient: adjoint of output_m)
    grad_filter_m  G^T dU     alpha -> 3         (weight gradient: adjoint of filter_m)

Interpolation points 0, 1, -1 (F(2,3)) and 0, 1, -1, 2, -2 (F(4,3)), plus the point at
infinity. The hot functions (input, output, grad_out) have only small integer coefficients,
written as sums of an element with itself (doubling is exact, so ``d + d`` is bitwise ``2*d``),
which keeps float32 arithmetic in float32 (a Python literal would promote it to float64); the
filter functions' fractions come in ``cs`` (``constants``), an array of the data's dtype.
"""
import numpy as np
from numba import njit

# output tile sizes m convkit ships: F(2x2, 3x3) and F(4x4, 3x3)
TILES = (2, 4)


def constants(dtype) -> np.ndarray:
    """The filter transforms' coefficients in ``dtype``: 1/2, 1/4, 1/6, 1/12, 1/24."""
    return np.array([1 / 2, 1 / 4, 1 / 6, 1 / 12, 1 / 24], dtype=dtype)


@njit(inline="always")
def input_2(d0, d1, d2, d3):
    """B^T d for F(2,3)."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(inline="always")
def input_4(d0, d1, d2, d3, d4, d5):
    """B^T d for F(4,3)."""
    q0, q1, q2, q3 = d0 - d2, d1 + d2, d1 - d2, d3 - d1
    e = d4 - d2
    q1, q2, q3 = q1 + q1, q2 + q2, q3 + q3
    return ((q0 + q0) + (q0 + q0) + e,      # 4d0 - 5d2 + d4
            (d4 + d3) - (q1 + q1),          # -4d1 - 4d2 + d3 + d4
            (d4 - d3) + (q2 + q2),          # 4d1 - 4d2 - d3 + d4
            e + q3,                         # -2d1 - d2 + 2d3 + d4
            e - q3,                         # 2d1 - d2 - 2d3 + d4
            (d5 - d3) - (q3 + q3))          # 4d1 - 5d3 + d5


@njit(inline="always")
def output_2(m0, m1, m2, m3):
    """A^T M for F(2,3)."""
    return m0 + m1 + m2, m1 - m2 - m3


@njit(inline="always")
def output_4(m0, m1, m2, m3, m4, m5):
    """A^T M for F(4,3)."""
    p1, n1, p2, n2 = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    p2x2, n2x2 = p2 + p2, n2 + n2
    return (m0 + p1 + p2,
            n1 + n2x2,
            p1 + (p2x2 + p2x2),
            n1 + ((n2x2 + n2x2) + (n2x2 + n2x2)) + m5)


@njit(inline="always")
def grad_out_2(g0, g1):
    """A g for F(2,3): the adjoint of ``output_2``."""
    return g0, g0 + g1, g0 - g1, -g1


@njit(inline="always")
def grad_out_4(g0, g1, g2, g3):
    """A g for F(4,3): the adjoint of ``output_4``."""
    ev, od = g0 + g2, g1 + g3
    g2x4 = (g2 + g2) + (g2 + g2)
    h = g1 + ((g3 + g3) + (g3 + g3))  # g1 + 4 g3
    return g0, ev + od, ev - od, (g0 + g2x4) + (h + h), (g0 + g2x4) - (h + h), g3


@njit(inline="always")
def filter_2(cs, g0, g1, g2):
    """G g for F(2,3)."""
    half = cs[0]
    return g0, (g0 + g1 + g2) * half, (g0 - g1 + g2) * half, g2


@njit(inline="always")
def filter_4(cs, g0, g1, g2):
    """G g for F(4,3)."""
    quarter, sixth, twelfth, tw4 = cs[1], cs[2], cs[3], cs[4]
    return (g0 * quarter, -(g0 + g1 + g2) * sixth, -(g0 - g1 + g2) * sixth,
            g0 * tw4 + g1 * twelfth + g2 * sixth, g0 * tw4 - g1 * twelfth + g2 * sixth, g2)


@njit(inline="always")
def grad_filter_2(cs, u0, u1, u2, u3):
    """G^T u for F(2,3): the adjoint of ``filter_2``."""
    half = cs[0]
    return u0 + (u1 + u2) * half, (u1 - u2) * half, (u1 + u2) * half + u3


@njit(inline="always")
def grad_filter_4(cs, u0, u1, u2, u3, u4, u5):
    """G^T u for F(4,3): the adjoint of ``filter_4``."""
    quarter, sixth, twelfth, tw4 = cs[1], cs[2], cs[3], cs[4]
    return (u0 * quarter - (u1 + u2) * sixth + (u3 + u4) * tw4,
            (u2 - u1) * sixth + (u3 - u4) * twelfth,
            (u3 + u4 - u1 - u2) * sixth + u5)
