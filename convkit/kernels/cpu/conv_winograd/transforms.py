"""The one-dimensional Winograd transforms of F(2,3) and F(4,3), written out.

F(m, 3) with alpha = m + 2 points computes m outputs of a 3-tap correlation from alpha inputs
with alpha multiplies: y = A^T [(G g) * (B^T d)]. The 2-D algorithm F(m x m, 3 x 3) applies each
matrix along both axes (``convkit.kernels.reference.winograd_tile`` has the matrices, with
Lavin & Gray's formula); here each product with a constant matrix is a function on alpha (or m,
or 3) strided elements, ``src[s0 + i*ss]`` -> ``dst[o0 + j*os]``, so one helper serves rows and
columns alike:

    input_1d       B^T d      alpha -> alpha     (forward and weight gradient: input tiles)
    output_1d      A^T M      alpha -> m         (forward: transformed products -> outputs)
    filter_1d      G g        3 -> alpha         (forward: the filter)
    grad_out_1d    A gy       m -> alpha         (weight gradient: adjoint of output_1d)
    grad_filter_1d G^T dU     alpha -> 3         (weight gradient: adjoint of filter_1d)

Interpolation points 0, 1, -1 (F(2,3)) and 0, 1, -1, 2, -2 (F(4,3)), plus the point at
infinity. The hot helpers (input_1d, output_1d, grad_out_1d) have only small integer
coefficients, written as sums of the element with itself (multiplying by 2 or 4 is exact, so
``d + d`` is bitwise ``2*d``), which keeps float32 arithmetic in float32 (a Python literal
would promote it to float64); the filter helpers' fractions come in ``cs`` (``constants``), an
array of the data's dtype.
"""
import numpy as np
from numba import njit

# alpha = m + 2 transform points per axis for the output tile sizes convkit ships
TILES = (2, 4)


def constants(dtype) -> np.ndarray:
    """The filter transforms' coefficients in ``dtype``: 1/2, 1/4, 1/6, 1/12, 1/24."""
    return np.array([1 / 2, 1 / 4, 1 / 6, 1 / 12, 1 / 24], dtype=dtype)


@njit(inline="always")
def input_1d(m, src, s0, ss, dst, o0, os):
    """dst = B^T src (alpha values each)."""
    if m == 2:
        d0, d1, d2, d3 = src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss]
        dst[o0] = d0 - d2
        dst[o0 + os] = d1 + d2
        dst[o0 + 2 * os] = d2 - d1
        dst[o0 + 3 * os] = d1 - d3
    else:
        d0, d1, d2 = src[s0], src[s0 + ss], src[s0 + 2 * ss]
        d3, d4, d5 = src[s0 + 3 * ss], src[s0 + 4 * ss], src[s0 + 5 * ss]
        q0, q1, q2 = d0 - d2, d1 + d2, d1 - d2
        q3, q4 = d3 - d1, d1 - d3
        e = d4 - d2
        dst[o0] = (q0 + q0) + (q0 + q0) + e  # 4d0 - 5d2 + d4
        dst[o0 + os] = (d4 + d3) - ((q1 + q1) + (q1 + q1))  # -4d1 - 4d2 + d3 + d4
        dst[o0 + 2 * os] = (d4 - d3) + ((q2 + q2) + (q2 + q2))  # 4d1 - 4d2 - d3 + d4
        dst[o0 + 3 * os] = e + (q3 + q3)  # -2d1 - d2 + 2d3 + d4
        dst[o0 + 4 * os] = e - (q3 + q3)  # 2d1 - d2 - 2d3 + d4
        dst[o0 + 5 * os] = (q4 + q4) + (q4 + q4) + (d5 - d3)  # 4d1 - 5d3 + d5


@njit(inline="always")
def output_1d(m, src, s0, ss, dst, o0, os):
    """dst = A^T src (alpha values in, m out)."""
    if m == 2:
        m0, m1, m2, m3 = src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss]
        dst[o0] = m0 + m1 + m2
        dst[o0 + os] = m1 - m2 - m3
    else:
        m0, m1, m2 = src[s0], src[s0 + ss], src[s0 + 2 * ss]
        m3, m4, m5 = src[s0 + 3 * ss], src[s0 + 4 * ss], src[s0 + 5 * ss]
        p1, n1 = m1 + m2, m1 - m2
        p2, n2 = m3 + m4, m3 - m4
        dst[o0] = m0 + p1 + p2
        dst[o0 + os] = n1 + (n2 + n2)
        q = p2 + p2
        dst[o0 + 2 * os] = p1 + (q + q)
        r = n2 + n2
        dst[o0 + 3 * os] = n1 + (r + r) + (r + r) + m5


@njit(inline="always")
def grad_out_1d(m, src, s0, ss, dst, o0, os):
    """dst = A src (m values in, alpha out): the adjoint of ``output_1d``."""
    if m == 2:
        g0, g1 = src[s0], src[s0 + ss]
        dst[o0] = g0
        dst[o0 + os] = g0 + g1
        dst[o0 + 2 * os] = g0 - g1
        dst[o0 + 3 * os] = -g1
    else:
        g0, g1, g2, g3 = src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss]
        ev, od = g0 + g2, g1 + g3
        dst[o0] = g0
        dst[o0 + os] = ev + od
        dst[o0 + 2 * os] = ev - od
        e2 = g2 + g2
        e2 = e2 + e2  # 4*g2
        o2 = g3 + g3
        o2 = o2 + o2  # 4*g3
        o2 = g1 + o2  # g1 + 4*g3
        o2 = o2 + o2  # 2*g1 + 8*g3
        dst[o0 + 3 * os] = (g0 + e2) + o2
        dst[o0 + 4 * os] = (g0 + e2) - o2
        dst[o0 + 5 * os] = g3


@njit(inline="always")
def filter_1d(m, cs, src, s0, ss, dst, o0, os):
    """dst = G src (3 filter taps in, alpha out)."""
    g0, g1, g2 = src[s0], src[s0 + ss], src[s0 + 2 * ss]
    if m == 2:
        half = cs[0]
        dst[o0] = g0
        dst[o0 + os] = (g0 + g1 + g2) * half
        dst[o0 + 2 * os] = (g0 - g1 + g2) * half
        dst[o0 + 3 * os] = g2
    else:
        quarter, sixth, twelfth, tw4 = cs[1], cs[2], cs[3], cs[4]
        dst[o0] = g0 * quarter
        dst[o0 + os] = -(g0 + g1 + g2) * sixth
        dst[o0 + 2 * os] = -(g0 - g1 + g2) * sixth
        dst[o0 + 3 * os] = g0 * tw4 + g1 * twelfth + g2 * sixth
        dst[o0 + 4 * os] = g0 * tw4 - g1 * twelfth + g2 * sixth
        dst[o0 + 5 * os] = g2


@njit(inline="always")
def grad_filter_1d(m, cs, src, s0, ss, dst, o0, os):
    """dst = G^T src (alpha values in, 3 taps out): the adjoint of ``filter_1d``."""
    if m == 2:
        u0, u1, u2, u3 = src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss]
        half = cs[0]
        dst[o0] = u0 + (u1 + u2) * half
        dst[o0 + os] = (u1 - u2) * half
        dst[o0 + 2 * os] = (u1 + u2) * half + u3
    else:
        u0, u1, u2 = src[s0], src[s0 + ss], src[s0 + 2 * ss]
        u3, u4, u5 = src[s0 + 3 * ss], src[s0 + 4 * ss], src[s0 + 5 * ss]
        quarter, sixth, twelfth, tw4 = cs[1], cs[2], cs[3], cs[4]
        dst[o0] = u0 * quarter - (u1 + u2) * sixth + (u3 + u4) * tw4
        dst[o0 + os] = (u2 - u1) * sixth + (u3 - u4) * twelfth
        dst[o0 + 2 * os] = (u3 + u4 - u1 - u2) * sixth + u5
