"""``python -m convkit.runtime.isa``: the kernels' instruction widths, compiled (never run) for this
machine and for AVX-512 CPU models; the example-argument registry against the wrappers' calls."""
import json
import os
import subprocess
import sys
from unittest import mock

import llvmlite.binding as ll
import numba
import numpy as np
import pytest

from convkit.kernels import cpu as K
from convkit.kernels.cpu import conv_im2col, conv_winograd
from convkit.kernels.cpu.conv_im2col import cblas_workers
from convkit.kernels.cpu.isa_specs import kernel_specs
from convkit.runtime import isa
from convkit.runtime.jit import Twin

NAMES = [name for name, _, _ in kernel_specs("float32")]
# kernels whose loops multiply-add with FMA contraction allowed (fastmath "contract" / "reassoc");
# forward_plane and backward_input_plane compile without it, so their products and sums stay
# separate instructions
FMA_KERNELS = ["conv_direct.forward_shifted", "conv_direct.forward_kinner",
               "conv_direct.backward_input_cinner", "conv_direct.backward_input_kdot",
               "conv_direct.backward_weight_kinner", "conv_direct.backward_weight_plane"]
# one forward, one backward-input and one backward-weight version: the fast tests' subset
SUBSET = ["conv_direct.forward_kinner", "conv_direct.backward_input_cinner",
          "conv_direct.backward_weight_kinner"]
HOST_AVX512 = ll.get_host_cpu_features().get("avx512f", False)


def _cli(tmp_path, *args):
    """The report of ``python -m convkit.runtime.isa ARGS --json FILE``, and its printed table."""
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "convkit.runtime.isa", *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _by_kernel(report):
    table = {}
    for r in report["kernels"]:
        table.setdefault(r["kernel"], []).append(r)
    return table


def test_count_instructions_by_register_width():
    asm = "\n".join([
        "_ZN8convkit6kernelE:", ".LBB0_1:", "\t.p2align\t4, 0x90",
        "\tvfmadd231ps\t%zmm1, %zmm2, %zmm0",
        "\tvfnmadd213pd\t(%rax), %ymm1, %ymm0",
        "\tvfmadd231ps\t%xmm1, %xmm2, %xmm0",
        "\tvfmadd213ss\t(%rax), %xmm1, %xmm0   # scalar FMA",
        "\tvgatherqps\t(%rax,%zmm1,4), %ymm0 {%k1}",  # 64-bit indices in zmm: a zmm instruction
        "\tvmulps\t%ymm1, %ymm2, %ymm0",
        "\tvmovq\t%xmm0, %rax",
        "\tvaddsd\t%xmm1, %xmm0, %xmm0",
        "\tvzeroupper", "\taddq\t$8, %rax", "# %zmm0 in a comment",
    ])
    counts = isa.count_instructions(asm)
    assert counts["fma"] == {"zmm": 1, "ymm": 1, "xmm": 1, "scalar": 1}
    assert counts["vector"] == {"zmm": 2, "ymm": 2, "xmm": 1, "scalar": 3}


def test_configuration(monkeypatch):
    monkeypatch.delenv("NUMBA_CPU_NAME", raising=False)
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)
    host = isa.host_cpu()
    assert isa.configuration() == {"NUMBA_CPU_NAME": host["name"],
                                   "NUMBA_CPU_FEATURES": host["numba_features"]}
    assert isa.configuration(wide=True)["NUMBA_CPU_FEATURES"] == (
        host["numba_features"] + ",-prefer-256-bit")
    # a named CPU model compiles with its own features (LLVM's default for an empty string)
    assert isa.configuration("skylake-avx512") == {"NUMBA_CPU_NAME": "skylake-avx512",
                                                   "NUMBA_CPU_FEATURES": ""}
    assert isa.configuration("icelake-server", wide=True)["NUMBA_CPU_FEATURES"] == (
        "-prefer-256-bit")
    assert isa.configuration("knl", "+avx512f")["NUMBA_CPU_FEATURES"] == "+avx512f"
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2,+fma")  # what Numba would use here
    assert isa.configuration(wide=True)["NUMBA_CPU_FEATURES"] == "+avx2,+fma,-prefer-256-bit"
    with pytest.raises(ValueError, match="features and wide"):
        isa.configuration(features="+avx2", wide=True)
    with pytest.raises(ValueError, match="cpu must be an LLVM CPU name"):
        isa.configuration("skylake avx512; rm")


def test_print_wide_features():
    proc = subprocess.run([sys.executable, "-m", "convkit.runtime.isa", "--print-wide-features"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == isa.host_cpu()["numba_features"] + ",-prefer-256-bit"


def test_unknown_kernel_name_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        isa.main(["--kernels", "conv_direct.no_such", "--dtypes", "float32"])
    assert e.value.code == 2
    assert "conv_direct.no_such" in capsys.readouterr().err


def _call_every_wrapper(dtype):
    """Run the kernel contract's functions on shapes that take every version and path the
    registry lists (the plain im2col kernels through the numpy pipeline, which calls them from
    Python)."""
    rng = np.random.default_rng(0)

    def a(*shape):
        return rng.standard_normal(shape).astype(dtype)

    s1, s2, p1, d1 = (1, 1), (2, 2), (1, 1), (1, 1)
    # (C, K, stride): forward shifted / kinner / plane; backward-input transposed kinner,
    # transposed shifted, cinner, kdot, plane; backward-weight kinner and plane
    for C, Kc, stride in [(2, 4, s1), (8, 8, s2), (8, 4, s2), (8, 8, s1), (2, 8, s2),
                          (2, 4, s2)]:
        x, w = a(2, C, 10, 10), a(Kc, C, 3, 3)
        y = K.conv2d_forward(x, w, a(Kc), stride, p1, d1, 1, "direct", relu=True)
        K.conv2d_forward(x, w, None, stride, p1, d1, 1, "direct")
        K.conv2d_backward_input(y, w, x.shape, stride, p1, d1, 1, "direct")
        K.conv2d_backward_weight(x, y, w.shape, stride, p1, d1, 1, "direct")
        K.conv2d_backward_bias(y)
        # im2col's numpy pipeline: epilogue, im2col, col2im (strided), nchw_to_kp
        y = conv_im2col.forward(x, w, a(Kc), stride, p1, d1, 1, y.shape[2:], True,
                                pipeline="numpy")
        conv_im2col.backward_input(y, w, x.shape, stride, p1, d1, 1, pipeline="numpy")
        conv_im2col.backward_weight(x, y, w.shape, stride, p1, d1, 1, pipeline="numpy")
    # im2col's cblas pipeline, where numpy's BLAS has it: plain (P >= 128, stride 2), row-shift
    # (stride 1, Cg*KW >= 32) and multi-image (P < 128) passes, as a team of two workers (one
    # image a block: these small problems would otherwise run one worker alone)
    if cblas_workers.available(dtype):
        one = lambda *args: 1  # noqa: E731
        with mock.patch.multiple(cblas_workers, block_images=one, weight_block_images=one,
                                 multi_images=one), \
                mock.patch.object(cblas_workers.blas, "workers", lambda flops: 2):
            for C, H, stride in [(4, 24, s2), (16, 12, s1), (4, 10, s1)]:
                x, w = a(2, C, H, H), a(8, C, 3, 3)
                out_hw = ((H - 1) // stride[0] + 1,) * 2
                y = cblas_workers.forward(x, w, a(8), stride, p1, d1, 1, out_hw, True)
                cblas_workers.backward_input(y, w, x.shape, stride, p1, d1, 1)
                cblas_workers.backward_weight(x, y, w.shape, stride, p1, d1, 1)
    # Winograd: forward (and backward_input through it), the weight gradient in one sum and
    # in partial sums (one tile row a chunk: several chunks)
    if conv_winograd.available(dtype):
        x, w = a(2, 8, 10, 10), a(8, 8, 3, 3)
        y = conv_winograd.forward(x, w, a(8), s1, p1, d1, 1, (10, 10), True)
        conv_winograd.backward_input(y, w, x.shape, s1, p1, d1, 1)
        conv_winograd.backward_weight(x, y, w.shape, s1, p1, d1, 1)
        with mock.patch.multiple(conv_winograd, WORKSPACE_BYTES=1, MIN_TILES=1):
            conv_winograd.backward_weight(x, y, w.shape, s1, p1, d1, 1)
    x = a(2, 8, 10, 10)
    for kernel, stride, padding in [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1))]:
        y, idx = K.max_pool2d_forward(x, kernel, stride, padding, (1, 1), False)
        K.max_pool2d_backward(y, idx, x.shape)
    r = K.relu_forward(x)
    K.relu_backward(a(*x.shape), r)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_registry_matches_the_wrappers_calls(dtype):
    """Every (kernel, example arguments) of the registry has the signature the real wrappers
    compile, so the tool reads the machine code that runs."""
    _call_every_wrapper(np.dtype(dtype))
    for name, kernel, args in kernel_specs(dtype):
        if name == "conv_im2col.unfold_rows":
            continue  # called only from the cblas workers' compiled code (see isa_specs)
        signature = tuple(numba.typeof(v) for v in args)
        dispatchers = ((kernel.parallel, kernel.serial) if isinstance(kernel, Twin)
                       else (kernel,))
        compiled = [s for d in dispatchers for s in d.signatures]
        assert signature in compiled, f"{name}: registry {signature}, wrappers {compiled}"


def test_host_kernels_subset_have_fma_and_no_zmm(tmp_path):
    before = {k: os.environ.get(k) for k in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    report, text = _cli(tmp_path, "--kernels", *SUBSET, "relu.relu_forward",
                        "--dtypes", "float32")
    assert {k: os.environ.get(k) for k in before} == before  # the tool sets them in its child
    assert report["host"]["name"] == ll.get_host_cpu_name()
    assert report["target"]["codegen_cpu_name"] == report["config"]["NUMBA_CPU_NAME"]
    table = _by_kernel(report)
    assert sorted(table) == sorted(SUBSET + ["relu.relu_forward"])
    for name in SUBSET:
        assert name in text
        for r in table[name]:
            assert r["fma"]["ymm"] + r["fma"]["xmm"] > 0, r
    if not HOST_AVX512:
        assert not any(r["zmm"] for r in report["kernels"])


@pytest.mark.slow
def test_host_lists_every_kernel_with_fma_and_no_zmm(tmp_path):
    # float32 only: every kernel and twin compiled for the host is the point here (116 s for
    # both dtypes, half of it float64, a sixth of CI's pytest time); the float64 signatures are
    # checked against the wrappers' calls by test_registry_matches_the_wrappers_calls
    report, _ = _cli(tmp_path, "--dtypes", "float32")
    table = _by_kernel(report)
    assert sorted(table) == sorted(NAMES)
    kernels = {name: kernel for name, kernel, _ in kernel_specs("float32")}
    for name, records in table.items():
        twins = ({"parallel", "serial"} if isinstance(kernels[name], Twin)
                 else {"parallel" if kernels[name].targetoptions.get("parallel") else "serial"})
        assert {(r["dtype"], r["twin"]) for r in records} == {("float32", t) for t in twins}
        for r in records:
            if name in FMA_KERNELS:
                assert r["fma"]["ymm"] + r["fma"]["xmm"] > 0, r
            if not HOST_AVX512:
                assert not r["zmm"], r


def test_avx512_fma_is_zmm_only_without_prefer_256_bit(tmp_path):
    """On skylake-avx512 LLVM's prefer-256-bit keeps every FMA at ymm; with it switched off the
    direct conv kernels' FMAs are zmm (compiled here, never run)."""
    narrow, _ = _cli(tmp_path, "--cpu", "skylake-avx512", "--kernels", *SUBSET,
                     "--dtypes", "float32")
    wide, text = _cli(tmp_path, "--cpu", "skylake-avx512", "--wide", "--kernels", *SUBSET,
                      "--dtypes", "float32")
    assert narrow["target"]["codegen_cpu_name"] == "skylake-avx512"
    assert wide["target"]["codegen_features"] == "-prefer-256-bit"
    assert len(narrow["kernels"]) == len(wide["kernels"]) == 2 * len(SUBSET)
    for r in narrow["kernels"]:
        assert r["fma"]["zmm"] == 0 and r["fma"]["ymm"] > 0, r
    for r in wide["kernels"]:
        assert r["fma"]["zmm"] > 0, r
    assert "yes" in text
