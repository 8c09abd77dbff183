"""One SimpleCNN training step (forward, cross-entropy, backward, Adam) with torch's layers vs
every conv/ReLU/pool from convkit, per conv algorithm (convkit.bench.shapes.TRAIN_SHAPES)."""
import pytest

from convkit.bench.shapes import ALGORITHMS, TRAIN_SHAPES


@pytest.mark.parametrize("impl", ("torch", "torch-tf32", *ALGORITHMS))
@pytest.mark.parametrize("shape", TRAIN_SHAPES, ids=lambda s: s.name)
def test_train_step(run_case, shape, impl):
    run_case(shape, "train_step", impl)
