"""convkit gpu-report: the SASS reading and occupancy rules on hand-made inputs, and (when
numba.cuda can compile PTX here and ptxas/nvdisasm exist) a real report for a few kernels."""
import json
import os

import numpy as np
import pytest

from convkit import gpu_report as G

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


# --- occupancy: the measured table, recomputed by hand -------------------------------
@pytest.mark.parametrize("regs,threads,smem,expected", [
    (84, 256, 0, 0.25),      # 84*32 -> 2816 per warp, 23 warps by regs -> 2 blocks of 8 warps
    (92, 128, 0, 0.3125),    # 3072 per warp -> 21 warps -> 5 blocks of 4 warps = 20 of 64
    (138, 128, 0, 0.1875),   # 4608 per warp -> 14 warps -> 3 blocks = 12 of 64
    (56, 256, 0, 0.5),       # 1792 per warp -> 36 warps -> 4 blocks = 32 of 64
    (128, 256, 0, 0.25),     # the 8x8 GEMM prototype of issue 13
    (28, 256, 0, 1.0),       # registers allow more than 2048 threads: the thread limit binds
    (32, 128, 48 * 1024, 0.25),   # 228 KB / (48 KB + 1 KB reserved) = 4 blocks of 4 warps
    (16, 32, 0, 0.5),        # 32 blocks of one warp: the block limit binds
    (255, 1024, 0, 0.0),     # 255 regs x 1024 threads do not fit in 64K registers
])
def test_occupancy_sm90(regs, threads, smem, expected):
    assert G.occupancy(G.ARCHS["sm_90"], regs, smem, threads) == pytest.approx(expected)


def test_occupancy_sm80_has_less_shared_memory():
    # 164 KB / 49 KB = 3 blocks of 4 warps on sm_80, 4 on sm_90
    assert G.occupancy(G.ARCHS["sm_80"], 32, 48 * 1024, 128) == pytest.approx(12 / 64)
    assert G.occupancy(G.ARCHS["sm_90"], 32, 48 * 1024, 128) == pytest.approx(16 / 64)


# --- SASS reading on a hand-written listing ---------------------------------------------------
SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   DEPBAR.LE SB0, 0x0 ;
.L_x_0:
        /*0020*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_s64) ;
        /*0030*/                   F2F.F64.F32 R4, R2 ;
.L_x_1:
        /*0040*/                   LDS R6, [R3] ;
        /*0050*/                   FFMA R8, R6, R7, R8 ;
        /*0060*/                   FFMA R9, R6, R5, R9 ;
        /*0070*/              @P0 BRA `(.L_x_1) ;
        /*0080*/                   DSETP.GT.AND P1, PT, R4, RZ, PT ;
        /*0090*/                   FFMA R10, R6, R7, R10 ;
        /*00a0*/              @!P1 BRA `(.L_x_0) ;
        /*00b0*/                   STL [R1], R8 ;
        /*00c0*/                   CALL.REL.NOINC `($__internal_1_$__cuda_sm20_rem_u64) ;
        /*00d0*/                   EXIT ;
.L_x_2:
        /*00e0*/                   BRA `(.L_x_2);
"""


def _parse(text):
    instrs, labels, pending = [], {}, []
    for line in text.splitlines():
        m = G._LABEL_RE.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = G._INSTR_RE.search(line)
        if m:
            for name in pending:
                labels[name] = int(m.group(1), 16)
            pending = []
            instrs.append(G.Instr(int(m.group(1), 16), m.group(2), m.group(3).strip()))
    return instrs, labels


def test_sass_analysis_finds_loops_fma_mix_float64_div_calls_and_local_memory():
    instrs, labels = _parse(SASS)
    assert G.find_loops(instrs, labels) == [(0x20, 0xa0), (0x40, 0x70)]  # not the tail trap
    a = G.analyse_sass(instrs, labels)
    # the inner loop 0x40..0x70: 4 instructions, 2 FFMA; the outer one holds it, so not innermost
    assert a["fma_loop"] == {"instructions": 4, "fma": 2, "share": 0.5, "range": [0x40, 0x70]}
    assert a["float64_instructions"] == 2  # F2F.F64 and DSETP; DEPBAR is no float64 op
    assert a["div64_calls_in_loops"] == 1  # the rem_u64 call after the loops does not count
    assert a["local_memory_instructions"] == 1


def _row(name, dtype="float32", kind="compute", share=0.7, regs=64, threads=256, **sass):
    s = {"fma_loop": {"instructions": 10, "fma": 7, "share": share} if share else None,
         "float64_instructions": 0, "div64_calls_in_loops": 0, "local_memory_instructions": 0}
    s.update(sass)
    return {"name": name, "dtype": dtype, "kind": kind, "spill_stores": 0, "spill_loads": 0,
            "stack": 0, "sass": s,
            "occupancy": G.occupancy(G.ARCHS["sm_90"], regs, 0, threads)}


def test_gates():
    assert all(ok is not False for ok in G.judge(_row("direct_forward")).values())
    assert G.judge(_row("gemm_nn"))["fma_share"] is True
    assert G.judge(_row("gemm_nn", share=0.55))["fma_share"] is False  # GEMM needs 60 %
    assert G.judge(_row("direct_forward", share=0.55))["fma_share"] is True
    assert G.judge(_row("direct_forward", share=None))["fma_share"] is False  # no FMA loop
    assert G.judge(_row("direct_forward", regs=168))["occupancy"] is False  # 18.75 %
    assert G.judge(_row("x", float64_instructions=1))["no_float64_in_float32"] is False
    assert G.judge(_row("x", dtype="float64", float64_instructions=9))[
        "no_float64_in_float32"] is None
    assert G.judge(_row("x", div64_calls_in_loops=1))["no_div64_in_loop"] is False
    assert G.judge(_row("x", kind="memory", div64_calls_in_loops=1, share=None)) == {
        "no_spills": True, "no_local_memory": True, "no_float64_in_float32": True,
        "no_div64_in_loop": None, "occupancy": None, "fma_share": None}
    assert G.judge(_row("x", local_memory_instructions=2))["no_local_memory"] is False


def test_missing_tools_name_the_packages(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(G, "find_tool", lambda name: None)
    monkeypatch.setattr(G, "compile_spec", lambda spec, arch: "// ptx\n")
    assert G.main(["--out", str(tmp_path), "--only", "relu_backward"]) == 0
    out = capsys.readouterr().out
    assert "nvidia-cuda-nvdisasm" in out and "gpu-tools" in out and "ptxas" in out
    assert G.main(["--out", str(tmp_path), "--only", "relu_backward", "--check"]) == 2
    report = json.loads((tmp_path / "report.json").read_text())
    assert [k["name"] for k in report["kernels"]] == ["relu_backward_float32",
                                                     "relu_backward_float64"]


def test_missing_compiler_libraries_name_the_packages(tmp_path, monkeypatch, capsys):
    from numba.cuda.cudadrv.error import NvvmSupportError

    def no_nvvm(spec, arch):
        raise NvvmSupportError("libNVVM cannot be found")

    monkeypatch.setattr(G, "compile_spec", no_nvvm)
    assert G.main(["--out", str(tmp_path), "--only", "relu_forward"]) == 2
    err = capsys.readouterr().err
    assert "NVVM" in err and "nvidia-cuda-nvcc-cu12==12.9.86" in err and "gpu-tools" in err


def test_check_fails_on_a_failed_gate_unless_allowed(tmp_path, monkeypatch, capsys):
    row = dict(_row("gemm_nn_float32", share=0.4), threads=256, dynamic_smem=0, regs=100,
               smem=0)
    row["gates"] = G.judge(row)
    monkeypatch.setattr(G, "build", lambda *a, **k: {
        "kernels": [row], "ptxas": "ptxas", "nvdisasm": "nvdisasm", "roofline": None})
    (tmp_path / "report.json").write_text('{"kernels": []}')
    assert G.main(["--out", str(tmp_path), "--check"]) == 1
    assert "FAIL gemm_nn_float32: fma_share" in capsys.readouterr().out
    assert G.main(["--out", str(tmp_path)]) == 0
    assert G.main(["--out", str(tmp_path), "--check", "--allow-fail", "gemm_nn"]) == 0


def test_every_kernel_module_declares_kernel_specs():
    """gpu-report compiles what kernel_specs lists: a module without it would go unjudged."""
    from convkit.kernels.cuda import _kernel_modules

    modules = _kernel_modules()
    assert {"convkit.kernels.cuda.pool", "convkit.kernels.cuda.relu"} <= {
        m.__name__ for m in modules}
    assert [m.__name__ for m in modules if not hasattr(m, "kernel_specs")] == []


def test_every_kernel_is_declared_once_with_a_valid_spec():
    from convkit.kernels.cuda import kernel_specs
    from convkit.kernels.cuda._report import KINDS

    names = [n for n, _, _ in G.collect_specs(G.DTYPES)]
    assert len(names) == len(set(names)) and names
    for dt in (np.float32, np.float64):
        for spec in kernel_specs(dt):
            assert spec.kind in KINDS, spec.name
            assert 0 < spec.threads <= 1024 and spec.dynamic_smem >= 0, spec.name
            assert callable(getattr(spec.kernel, "py_func", None)), spec.name


# --- a real report, where the compiler and binary tools are installed -------------------------
def _can_compile():
    if SIMULATOR:
        return "compiles real PTX; not under the simulator"
    try:
        from numba import cuda
        from numba.core import types

        cuda.compile_ptx(lambda a: None, (types.float32[::1],), cc=(9, 0))
    except Exception as e:  # noqa: BLE001 - no NVVM / NVRTC: nothing to compile with
        return f"numba.cuda cannot compile PTX here ({e!s:.80}); pip install -e .[gpu-tools]"
    if not (G.find_tool("ptxas") and G.find_tool("nvdisasm")):
        return "ptxas / nvdisasm not installed; pip install -e .[gpu-tools]"
    return None


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    why = _can_compile()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("gpu-report")
    assert G.main(["--arch", "sm_90", "--out", str(out), "--only", "relu_backward",
                   "max_pool2d_forward", "--check", "--no-roofline"]) == 0
    return out


def test_report_json_structure(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    assert list(report) == ["kernels"]
    kernels = report["kernels"]
    assert {k["name"] for k in kernels} == {
        f"{op}_{dt}" for op in ("relu_backward", "max_pool2d_forward") for dt in G.DTYPES}
    for k in kernels:
        assert list(k) == ["name", "dtype", "ptx", "threads", "dynamic_smem", "kind"]
        assert k["dtype"] in G.DTYPES and k["name"].endswith(k["dtype"])
        assert k["kind"] == "memory" and k["threads"] == 256 and k["dynamic_smem"] == 0
        ptx = (report_dir / k["ptx"]).read_text()
        assert ".entry" in ptx and ".target sm_90" in ptx


def test_memory_kernels_pass_their_gates_on_sm90(report_dir):
    """The issue's findings, fixed: no float64 op in the float32 pool/ReLU kernels, no 64-bit
    division call inside their loops, no spills."""
    analysis = json.loads((report_dir / "analysis.json").read_text())
    rows = {r["name"]: r for r in analysis["kernels"]}
    for name in ("relu_backward_float32", "max_pool2d_forward_float32"):
        r = rows[name]
        assert r["sass"]["float64_instructions"] == 0, name
        assert r["sass"]["div64_calls_in_loops"] == 0, name
        assert r["spill_stores"] == 0 and r["regs"] > 0, name
        assert all(ok is not False for ok in r["gates"].values()), name
    # the float64 kernels do use float64 instructions: the detector sees them
    assert rows["max_pool2d_forward_float64"]["sass"]["float64_instructions"] > 0
