python -m convkit.bench --report benchmarks/results --readme README.md
