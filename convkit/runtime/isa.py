"""Which x86 vector instructions convkit's CPU kernels compile to, for this or another CPU.

    python -m convkit.runtime.isa                              # as Numba compiles here
    python -m convkit.runtime.isa --cpu skylake-avx512         # an AVX-512 CPU model
    python -m convkit.runtime.isa --cpu skylake-avx512 --wide  # the same, prefer-256-bit off
    python -m convkit.runtime.isa --print-wide-features        # the opt-in to 512 bits

Numba compiles for the CPU that NUMBA_CPU_NAME / NUMBA_CPU_FEATURES name (default: the host), and
reads them once per process, so each configuration is compiled in a child process of its own with
those variables set and an empty NUMBA_CACHE_DIR (no cached code for another CPU is loaded, and
the user's cache is not touched). The child compiles every kernel that
``convkit.kernels.cpu.isa_specs.kernel_specs(dtype)`` lists (the parallel and serial twin of each
``runtime.jit.Twin``, or the single dispatcher of a plain ``@njit`` kernel) at the argument types
its Python wrapper passes, for float32 and float64, and counts the instructions of each compiled
module (the kernel, its parallel-loop body and Numba's wrappers) by register width. Nothing is
run: code for a CPU this machine is not (AVX-512 on an AVX2 machine) would stop the process with
SIGILL.

On AVX-512 CPU models (skylake-avx512, icelake-server, sapphirerapids, ...) LLVM's tuning flag
``prefer-256-bit`` keeps loop vectorisation at 256-bit ymm registers; ``--wide`` appends
``-prefer-256-bit`` to the features, which is what a user sets process-wide to get 512-bit code
(``--print-wide-features``). convkit never sets these variables itself.

The kernels live in a higher layer than this module (``kernels -> runtime``), so the child runs
``convkit.kernels.cpu.isa_specs`` as its main module and that module calls :func:`child_main`
with its registry; this module only names it.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

WIDE_FEATURE = "-prefer-256-bit"
DTYPES = ("float32", "float64")
WIDTHS = ("zmm", "ymm", "xmm", "scalar")
# the child process's main module: the registry of kernels and their example arguments
SPECS_MODULE = "convkit.kernels.cpu.isa_specs"

# vfmadd231ps, vfnmadd213sd, vfmsubadd132ps, FMA4's vfmaddps, ...
_FMA = re.compile(r"^vf(n?m(add|sub)|madd|msub)")
# scalar forms: ss/sd/sh suffixes (vfmadd231ss, vmovsd, vcvtss2sd), moves between a
# general-purpose and an xmm register
_SCALAR = re.compile(r"(ss|sd|sh)$|^v?mov[dq]$|^v?cvt\w*2s[sd]$")


def count_instructions(asm: str) -> Dict[str, Dict[str, int]]:
    """{"fma": {width: n}, "vector": {width: n}} for AT&T assembly text. An instruction's width
    is its widest vector register (zmm > ymm > xmm); an xmm instruction on scalars (``*ss``,
    ``*sd``, ``vmovd``/``vmovq``) counts as "scalar". FMA counts every vf[n]madd/vf[n]msub form."""
    counts = {"fma": dict.fromkeys(WIDTHS, 0), "vector": dict.fromkeys(WIDTHS, 0)}
    for line in asm.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(".") or line.endswith(":"):
            continue
        mnemonic, _, operands = line.partition("\t" if "\t" in line else " ")
        if "%zmm" in operands:
            width = "zmm"
        elif "%ymm" in operands:
            width = "ymm"
        elif "%xmm" in operands:
            width = "scalar" if _SCALAR.search(mnemonic) else "xmm"
        else:
            continue
        counts["vector"][width] += 1
        if _FMA.match(mnemonic):
            counts["fma"][width] += 1
    return counts


def host_cpu() -> Dict[str, str]:
    """LLVM's name and feature string of this machine's CPU (llvmlite.binding), and the feature
    string Numba compiles for here when NUMBA_CPU_FEATURES is unset."""
    import llvmlite.binding as ll
    from numba.core.codegen import get_host_cpu_features

    return {"name": ll.get_host_cpu_name(), "features": ll.get_host_cpu_features().flatten(),
            "numba_features": get_host_cpu_features()}


def wide_features(features: str) -> str:
    """``features`` with LLVM's prefer-256-bit tuning switched off."""
    return f"{features},{WIDE_FEATURE}" if features else WIDE_FEATURE


def configuration(cpu: Optional[str] = None, features: Optional[str] = None,
                  wide: bool = False) -> Dict[str, str]:
    """The NUMBA_CPU_NAME and NUMBA_CPU_FEATURES a child compiles with. Without ``cpu``: what
    Numba uses in this environment (those variables where set, else the host's name and
    features); with ``cpu``: that CPU model with its own features (LLVM's default for the model:
    an empty feature string). ``features`` replaces the feature string; ``wide`` appends
    ``-prefer-256-bit`` to it."""
    if features is not None and wide:
        raise ValueError("features and wide: give one of them (wide appends -prefer-256-bit to "
                         "the default features)")
    if cpu is None:
        host = None
        name = os.environ.get("NUMBA_CPU_NAME")
        if name is None:
            host = host_cpu()
            name = host["name"]
        default = os.environ.get("NUMBA_CPU_FEATURES")
        if default is None:
            default = (host or host_cpu())["numba_features"]
    else:
        if not cpu or not re.fullmatch(r"[A-Za-z0-9_.\-]+", cpu):
            raise ValueError(f"cpu must be an LLVM CPU name such as 'skylake-avx512', got {cpu!r}")
        name, default = cpu, ""
    chosen = default if features is None else features
    return {"NUMBA_CPU_NAME": name, "NUMBA_CPU_FEATURES": wide_features(chosen) if wide
            else chosen}


def compile_kernel(kernel, args):
    """[(twin, dispatcher, signature)] of ``kernel`` compiled (not run) for ``args``, or loaded
    from Numba's cache: both twins of a ``Twin`` (branch-free ones through their own compile, as
    their first call does), or the one dispatcher of a plain ``@njit`` kernel ("parallel" for a
    ``parallel=True`` one)."""
    import numba

    from convkit.runtime.jit import Twin

    signature = tuple(numba.typeof(a) for a in args)
    if isinstance(kernel, Twin):
        pairs = [("parallel", kernel.parallel), ("serial", kernel.serial)]
        if getattr(kernel, "_branchless", False):  # its LLVM options, as its first call sets
            kernel._compile(args)
    else:
        pairs = [("parallel" if kernel.targetoptions.get("parallel") else "serial", kernel)]
    for _, dispatcher in pairs:
        if signature not in dispatcher.signatures:
            dispatcher.compile(signature)
    return [(which, dispatcher, signature) for which, dispatcher in pairs]


def inspect_kernels(specs_for: Callable[[str], list], dtypes: Sequence[str] = DTYPES,
                    patterns: Optional[Sequence[str]] = None) -> List[dict]:
    """One record per kernel, dtype and twin: its signature and :func:`count_instructions` of
    its compiled module. ``specs_for(dtype)`` lists (name, kernel, args); ``patterns`` (shell
    wildcards) keep only the kernels whose name matches one of them."""
    records = []
    for dtype in dtypes:
        specs = specs_for(dtype)
        names = [name for name, _, _ in specs]
        if patterns:
            unknown = [p for p in patterns if not fnmatch.filter(names, p)]
            if unknown:
                raise ValueError(f"kernels {unknown} match none of: {', '.join(names)}")
        for name, kernel, args in specs:
            if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            for which, dispatcher, signature in compile_kernel(kernel, args):
                counts = count_instructions(dispatcher.inspect_asm(signature))
                records.append({"kernel": name, "dtype": dtype, "twin": which,
                                "signature": str(signature), **counts,
                                "zmm": counts["vector"]["zmm"] > 0})
    return records


def _numba_target() -> Dict[str, str]:
    """The CPU name and features Numba's codegen actually compiles for in this process."""
    from numba.core import config
    from numba.core.registry import cpu_target

    codegen = cpu_target.target_context.codegen()
    return {"config_cpu_name": config.CPU_NAME, "config_cpu_features": config.CPU_FEATURES,
            "codegen_cpu_name": codegen._get_host_cpu_name(),
            "codegen_features": codegen._tm_features}


def child_main(specs_for: Callable[[str], list], argv: Optional[Sequence[str]] = None) -> None:
    """The child process: compile and count (see :func:`inspect_kernels`), write the report as
    JSON to ``--out``. Run by :func:`run` as ``python -m convkit.kernels.cpu.isa_specs``."""
    import llvmlite
    import llvmlite.binding as ll
    import numba

    parser = argparse.ArgumentParser(prog=SPECS_MODULE)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--kernels", nargs="+")
    args = parser.parse_args(argv)
    try:
        records = inspect_kernels(specs_for, args.dtypes, args.kernels)
    except ValueError as e:  # an unknown kernel name: the parent raises it as a ValueError
        with open(args.out, "w") as f:
            json.dump({"error": str(e)}, f)
        sys.exit(2)
    report = {"target": _numba_target(), "host": host_cpu(), "numba": numba.__version__,
              "llvmlite": llvmlite.__version__,
              "llvm": ".".join(map(str, ll.llvm_version_info)), "kernels": records}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


def run(cpu: Optional[str] = None, features: Optional[str] = None, wide: bool = False,
        kernels: Optional[Sequence[str]] = None, dtypes: Sequence[str] = DTYPES) -> dict:
    """Compile the kernels in a child process configured by :func:`configuration` and return
    its report: {"config", "target", "host", "numba", "llvmlite", "llvm", "kernels": [records]}."""
    config = configuration(cpu, features, wide)
    with tempfile.TemporaryDirectory(prefix="convkit-isa-") as tmp:
        out = os.path.join(tmp, "report.json")
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "numba-cache"), **config)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        command = [sys.executable, "-m", SPECS_MODULE, "--out", out, "--dtypes", *dtypes]
        if kernels:
            command += ["--kernels", *kernels]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode == 2 and os.path.exists(out):
            with open(out) as f:
                raise ValueError(json.load(f)["error"])
        if proc.returncode != 0:
            sigill = ", SIGILL: code for this CPU was run" if proc.returncode == -4 else ""
            raise RuntimeError(f"compiling for {config} failed (exit {proc.returncode}{sigill})"
                               f":\n{proc.stderr[-4000:]}")
        with open(out) as f:
            report = json.load(f)
    report["config"] = config
    return report


def format_report(report: dict) -> str:
    """The report as a text table: per kernel, dtype and twin, FMA and all vector instructions
    by width, and whether any zmm (512-bit) register appears."""
    config, target, host = report["config"], report["target"], report["host"]
    features = config["NUMBA_CPU_FEATURES"]
    if features == host["numba_features"]:
        shown = "the host's (as Numba detects them)"
    elif features.startswith(host["numba_features"] + ","):
        shown = "the host's + " + features[len(host["numba_features"]) + 1:]
    else:
        shown = repr(features) if features else "'' (the CPU model's own)"
    compiled = (target["codegen_cpu_name"], target["codegen_features"])
    vector = [f for f in host["features"].split(",") if f[1:].startswith(("avx", "fma"))
              and f.startswith("+")]
    lines = [f"target: NUMBA_CPU_NAME={config['NUMBA_CPU_NAME']}, NUMBA_CPU_FEATURES={shown}"
             + ("" if compiled == (config["NUMBA_CPU_NAME"], features)
                else f"\n  BUT Numba compiled for {compiled}"),
             f"host (LLVM): {host['name']}, vector features {','.join(vector) or 'none'}",
             f"numba {report['numba']}, llvmlite {report['llvmlite']}, LLVM {report['llvm']}",
             "static instruction counts per compiled module (kernel, parallel-loop body, "
             "wrappers), by register width: zmm 512, ymm 256, xmm 128 bit, scalar", ""]
    head = ("kernel", "dtype", "twin", "FMA zmm", "ymm", "xmm", "scalar",
            "vector zmm", "ymm", "xmm", "scalar", "zmm?")
    rows = [head] + [(r["kernel"], r["dtype"], r["twin"],
                      *(str(r["fma"][w]) for w in WIDTHS),
                      *(str(r["vector"][w]) for w in WIDTHS), "yes" if r["zmm"] else "no")
                     for r in report["kernels"]]
    sizes = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        lines.append("  ".join(cell.ljust(size) if i < 3 else cell.rjust(size)
                               for i, (cell, size) in enumerate(zip(row, sizes))))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m convkit.runtime.isa``: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m convkit.runtime.isa",
        description="Compile convkit's CPU kernels for a CPU (without running them) and count "
                    "their FMA and vector instructions by register width.")
    parser.add_argument("--cpu", help="LLVM CPU name (default: what Numba uses here)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--features", help="LLVM feature string, as NUMBA_CPU_FEATURES")
    group.add_argument("--wide", action="store_true",
                       help=f"the default features plus ',{WIDE_FEATURE}' (512-bit vectors on "
                            f"AVX-512 CPU models)")
    parser.add_argument("--kernels", nargs="+", metavar="NAME",
                        help="only these kernels (shell wildcards: 'conv_direct.*')")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--print-wide-features", action="store_true",
                        help="print the host's Numba features plus ',-prefer-256-bit' (the "
                             "NUMBA_CPU_FEATURES value that opts in to 512-bit code) and exit")
    args = parser.parse_args(argv)
    if args.print_wide_features:
        print(wide_features(host_cpu()["numba_features"]))
        return 0
    try:
        report = run(args.cpu, args.features, args.wide, args.kernels, args.dtypes)
    except ValueError as e:
        parser.error(str(e))
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
