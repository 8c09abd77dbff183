"""conv2d forward, backward-input, backward-weight and forward+backward: torch vs each convkit
algorithm, on every conv shape of the table (convkit.bench.shapes.CONV_SHAPES)."""
import pytest

from convkit.bench.shapes import ALGORITHMS, CONV_OPS, CONV_SHAPES


@pytest.mark.parametrize("impl", ("torch", "torch-tf32", *ALGORITHMS))
@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: s.name)
def test_conv2d(run_case, shape, op, impl):
    run_case(shape, op, impl)
