"""convkit's hand-written CUDA GEMM vs cuBLAS, and per-op launch overhead (needs a CUDA GPU).

    python benchmarks/cuda_gemm.py [--size 2048] [--shapes 64x576x12544 ...] [--reps 20]

Shapes are M x K x N: the square --size and the conv-shaped products im2col runs (few output
channels M, a long reduction K = C*KH*KW, many pixels N), where a 128x128 tile wastes rows.

Validates before timing (llm.c style): the GEMM result is checked against torch.matmul (cuBLAS,
TF32 off) first. Times are CUDA-event medians on torch's current stream; the L2 cache is flushed
before every GEMM repetition. Launch overhead is the host wall time per call of a tiny op
(1x1x8x8), synchronised once at the end, so it measures Python + launch cost, not the GPU.
"""
import argparse
import statistics
import time

import torch


def _median_ms(fn, reps, flush=None):
    times = []
    for _ in range(reps):
        if flush is not None:
            flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _per_call_us(fn, calls=2000):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def _compare_gemm(shape, dtype, reps, flush):
    from numba import cuda

    from convkit.kernels.cuda import gemm

    M, K, N = shape
    a = torch.randn(M, K, device="cuda", dtype=dtype)
    b = torch.randn(K, N, device="cuda", dtype=dtype)
    out = torch.empty(M, N, device="cuda", dtype=dtype)
    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
    A, B, C = (cuda.as_cuda_array(t, sync=False) for t in (a, b, out))
    gemm(A, B, C, stream=stream)
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(out, a @ b, rtol=tol, atol=tol * K ** 0.5)
    ours = _median_ms(lambda: gemm(A, B, C, stream=stream), reps, flush)
    theirs = _median_ms(lambda: torch.matmul(a, b, out=out), reps, flush)
    gflop = 2 * M * K * N / 1e9
    print(f"{str(dtype):14s} {M}x{K}x{N:<8} convkit {ours:8.3f} ms {gflop / ours:7.2f} TFLOP/s | "
          f"cuBLAS {theirs:8.3f} ms {gflop / theirs:7.2f} TFLOP/s | "
          f"convkit speed / cuBLAS speed = {theirs / ours:5.2f}")


def _shape(text):
    try:
        M, K, N = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is MxKxN, got {text!r}") from None
    return M, K, N


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="M = N = K of the square GEMM")
    # conv-shaped: ResNet 3x3 C64 at 56x56 and C128 at 28x28 per image (M=K_out, K=C*9, N=P)
    p.add_argument("--shapes", type=_shape, nargs="*", default=[(64, 576, 3136),
                                                                (128, 1152, 784)])
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/cuda_gemm.py needs a CUDA GPU visible to torch")
    torch.backends.cuda.matmul.allow_tf32 = False
    from numba import cuda

    import convkit.functional as CF
    from convkit.kernels.cuda import relu_forward

    n = args.size
    # one public call first: it sets convkit's CUDA engine up, which hands kernel outputs to
    # torch's caching allocator (without it every raw-kernel call below would cudaMalloc)
    CF.relu(torch.zeros(1, device="cuda"))
    print(f"device: {torch.cuda.get_device_name()}  GEMM MxKxN, TF32 off")
    flush = torch.empty(256 * 1024 * 1024 // 4, device="cuda")  # larger than any L2
    for dtype in (torch.float32, torch.float64):
        for shape in [(n, n, n)] + list(args.shapes):
            _compare_gemm(shape, dtype, args.reps, flush)
    x = torch.randn(1, 1, 8, 8, device="cuda")
    X = cuda.as_cuda_array(x, sync=False)
    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
    print(f"launch overhead per call: raw kernel relu_forward "
          f"{_per_call_us(lambda: relu_forward(X, stream=stream)):6.1f} us, "
          f"convkit.functional.relu {_per_call_us(lambda: CF.relu(x)):6.1f} us, "
          f"torch.relu {_per_call_us(lambda: torch.relu(x)):6.1f} us")


if __name__ == "__main__":
    main()
