"""ReLU and 2x2 max-pool, forward and backward, at SimpleCNN's activation sizes: torch vs
convkit (convkit.bench.shapes.PLANE_SHAPES)."""
import pytest

from convkit.bench.shapes import PLANE_SHAPES, POOL_OPS, RELU_OPS


@pytest.mark.parametrize("impl", ("torch", "convkit"))
@pytest.mark.parametrize("op", RELU_OPS + POOL_OPS)
@pytest.mark.parametrize("shape", PLANE_SHAPES, ids=lambda s: s.name)
def test_relu_pool(run_case, shape, op, impl):
    run_case(shape, op, impl)
