"""The two functions ``convkit.runtime.openmp`` registers as Numba's threading layer, compiled as
cached Numba cfuncs (see that module for what they do and why).

They reach libgomp through symbols (``convkit_GOMP_parallel``, ``convkit_omp_get_thread_num``,
``convkit_omp_get_num_threads``, and ``convkit_gomp_team_member`` for the team function itself)
that ``openmp.install`` binds with ``llvmlite.binding.add_symbol`` before importing this module,
the way Numba's own parallel kernels reach ``numba_parallel_for``: the compiled code holds names,
not this process's addresses, so Numba's cache can keep it (compiling the three took 1-4 s at
every process start).

Importing this module compiles (or loads) the cfuncs and binds ``convkit_gomp_team_member``, so
only ``openmp.install`` imports it, after binding the libgomp symbols (LLVM aborts the
process on an unbound one).
"""
import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, types
from numba.core import cgutils
from numba.extending import intrinsic

_I32, _I64 = ir.IntType(32), ir.IntType(64)


def _external(builder, name, restype, argtypes):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(restype, argtypes),
                                          name)


@intrinsic
def _address(typingctx, pointer):
    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], _I64)
    return types.int64(pointer), codegen


@intrinsic
def _pointer(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(types.int64), codegen


@intrinsic
def _thread_num(typingctx):
    def codegen(context, builder, signature, args):
        return builder.call(_external(builder, "convkit_omp_get_thread_num", _I32, []), [])
    return types.int32(), codegen


@intrinsic
def _num_threads(typingctx):
    def codegen(context, builder, signature, args):
        return builder.call(_external(builder, "convkit_omp_get_num_threads", _I32, []), [])
    return types.int32(), codegen


@intrinsic
def _gomp_parallel_team(typingctx, data, threads):
    """GOMP_parallel(convkit_gomp_team_member, data, threads, 0)."""
    def codegen(context, builder, signature, args):
        vp = cgutils.voidptr_t
        member = _external(builder, "convkit_gomp_team_member", ir.VoidType(), [vp])
        gomp = _external(builder, "convkit_GOMP_parallel", ir.VoidType(), [vp, vp, _I32, _I32])
        builder.call(gomp, [builder.bitcast(member, vp), args[0],
                            builder.trunc(args[1], _I32) if args[1].type.width > 32 else args[1],
                            ir.Constant(_I32, 0)])
        return context.get_dummy_value()
    return types.void(types.voidptr, threads), codegen


@intrinsic
def _call_gufunc(typingctx, fn, args, dims, steps, data):
    """fn(args, dims, steps, data): Numba's gufunc calling convention, all void*."""
    def codegen(context, builder, signature, a):
        vp = cgutils.voidptr_t
        callee = builder.inttoptr(a[0], ir.FunctionType(ir.VoidType(), [vp] * 4).as_pointer())
        builder.call(callee, [builder.inttoptr(v, vp) for v in a[1:]])
        return context.get_dummy_value()
    return types.void(types.int64, types.int64, types.int64, types.int64, types.int64), codegen


@cfunc(types.void(types.voidptr), cache=True)
def team_member(data):
    """One thread of the team: schedule chunks [size*t/T, size*(t+1)/T), each called with its
    arrays advanced by chunk * step and an outer count of 1 (as Numba's omppool.cpp)."""
    c = carray(data, (7,), np.int64)
    fn, args_at, dims_at, steps_at, user_data, arg_len, array_count = \
        c[0], c[1], c[2], c[3], c[4], c[5] + 1, c[6]
    dims = carray(_pointer(dims_at), (arg_len,), np.int64)
    steps = carray(_pointer(steps_at), (array_count,), np.int64)
    args = carray(_pointer(args_at), (array_count,), np.int64)
    t, T, size = _thread_num(), _num_threads(), dims[0]
    count = np.empty(arg_len, np.int64)
    moved = np.empty(array_count, np.int64)
    for r in range(size * t // T, size * (t + 1) // T):
        count[:] = dims
        count[0] = 1
        for j in range(array_count):
            moved[j] = args[j] + steps[j] * r if args[j] != 0 else 0
        _call_gufunc(fn, moved.ctypes.data, count.ctypes.data, steps_at, user_data)


llvm.add_symbol("convkit_gomp_team_member", team_member.address)


@cfunc(types.void(types.voidptr, types.voidptr, types.voidptr, types.voidptr, types.voidptr,
                  types.uintp, types.uintp, types.int32), cache=True)
def parallel_for(fn, args, dims, steps, data, inner_ndim, array_count, threads):
    """Numba's ``numba_parallel_for``: one OpenMP team of ``threads`` runs ``team_member``."""
    c = np.empty(7, np.int64)
    c[0], c[1], c[2], c[3], c[4] = (_address(fn), _address(args), _address(dims),
                                    _address(steps), _address(data))
    c[5], c[6] = inner_ndim, array_count
    _gomp_parallel_team(_pointer(c.ctypes.data), threads)


@cfunc(types.int32(), cache=True)
def get_thread_id():
    """Numba's ``get_thread_id``: this thread's number in the current OpenMP team."""
    return _thread_num()
