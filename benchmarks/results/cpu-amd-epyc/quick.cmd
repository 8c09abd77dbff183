python -m convkit.bench --quick --report benchmarks/results
