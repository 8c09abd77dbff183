python -m convkit.bench --quick --interleave --report benchmarks/results
