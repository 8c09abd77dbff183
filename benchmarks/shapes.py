"""The benchmark shape table: ``python benchmarks/shapes.py`` lists it with FLOP counts.

The table itself lives in ``convkit/bench.py`` (``CONV_SHAPES``, ``PLANE_SHAPES``,
``TRAIN_SHAPES``) so that an installed ``convkit bench`` has it too; these pytest-benchmark
suites and the CLI read the same tuples. Add a shape there and both pick it up.
"""
from convkit.bench import CONV_SHAPES, PLANE_SHAPES, TRAIN_SHAPES, all_shapes, ops_for

__all__ = ["CONV_SHAPES", "PLANE_SHAPES", "TRAIN_SHAPES", "all_shapes", "ops_for"]


def main() -> None:
    """Print every shape: name, description, forward GFLOP (convs), quick-subset flag."""
    for s in all_shapes():
        gflop = f"{s.flops / 1e9:8.3f} GFLOP fwd" if hasattr(s, "flops") else " " * 17
        print(f"{s.name:<18} {s.describe():<40} {gflop}  {'quick' if s.quick else ''}")


if __name__ == "__main__":
    main()
