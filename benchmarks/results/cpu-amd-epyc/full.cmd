python -m convkit.bench --report benchmarks/results
