"""pytest-benchmark plumbing for the suites in this folder (not part of the normal test run:
setup.cfg's testpaths is tests/). Run them with

    pytest benchmarks/ --benchmark-only                       # everything, CPU
    pytest benchmarks/ --bench-quick                          # the quick subset
    pytest benchmarks/ --bench-device cuda                    # torch column = cuDNN, TF32 off
    pytest benchmarks/ --benchmark-save=mine && pytest benchmarks/ --benchmark-compare

Every benchmark validates its implementation against torch on the same tensors before timing
(llm.c's harness), so the timed call is one whose output was checked.
"""
import pytest
import torch

from convkit.bench.cases import build_cases
from convkit.bench.harness import TF32, TOLERANCE, Timer, first_call
from convkit.bench.shapes import all_shapes


def pytest_addoption(parser):
    group = parser.getgroup("convkit bench")
    group.addoption("--bench-device", default="cpu", choices=("cpu", "cuda"),
                    help="device for the convkit benchmarks (default cpu)")
    group.addoption("--bench-quick", action="store_true",
                    help="only the shapes of `convkit bench --quick`")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--bench-quick"):
        return
    quick = {s.name for s in all_shapes() if s.quick}
    keep, drop = [], []
    for item in items:
        shape = getattr(item, "callspec", None) and item.callspec.params.get("shape")
        (keep if shape is None or shape.name in quick else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def bench_device(request):
    device = torch.device(request.config.getoption("--bench-device"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("--bench-device cuda but torch sees no CUDA device")
        torch.backends.cudnn.benchmark = True
    return device


@pytest.fixture
def run_case(benchmark, bench_device):
    """``run_case(shape, op, impl)``: build the case, check it against torch, then time it.

    impl is "torch", "torch-tf32" (CUDA only), a convkit algorithm, or "convkit" (ReLU / pool).
    Benchmarks are grouped per shape and op, so pytest-benchmark's table, --benchmark-compare
    and its JSON put convkit's algorithms next to torch on the same problem.
    """
    def run(shape, op, impl):
        if impl == "torch-tf32" and bench_device.type != "cuda":
            pytest.skip("the TF32 column exists on CUDA only")
        algorithms = () if impl.startswith("torch") else (impl,)
        cases = build_cases(shape, op, bench_device, algorithms,
                            tf32_column=impl == "torch-tf32")
        case = next(c for c in cases if c.impl == impl)
        timer = Timer(bench_device)
        reference = None
        if not case.is_torch:
            _, reference, _ = first_call(cases[0], timer)
        seconds, _, err = first_call(case, timer, reference)
        tol = TOLERANCE[torch.float32]
        if err is not None and not err <= tol:
            pytest.fail(f"{shape.name} {op} {impl}: max relative error {err:.2e} > {tol:.0e}; "
                        "not timed")
        benchmark.group = f"{shape.name} {op}"
        benchmark.extra_info.update(shape=shape.describe(), op=op, impl=impl, level=case.level,
                                    first_call_ms=seconds * 1e3, max_rel_error=err,
                                    flops=case.flops, bytes=case.bytes)

        def call():
            case.run()
            timer.sync()

        with TF32(case.tf32):
            benchmark(call)
        if case.choice is not None:
            benchmark.extra_info["auto_choice"] = case.choice()
        stats = getattr(benchmark, "stats", None)
        median = stats.stats.median if stats is not None else None
        if median and case.flops:
            benchmark.extra_info["gflops"] = case.flops / median / 1e9
        elif median and case.bytes:
            benchmark.extra_info["gbps"] = case.bytes / median / 1e9
    return run
