"""Numba intrinsics for kernels that call BLAS themselves and share work between threads.

``cblas_gemm`` calls numpy's OpenBLAS ``cblas_?gemm`` through an address passed at run time (see
``convkit.runtime.blas.gemm_address``), so compiled code holds no process-specific address and can
be cached;
``fetch_add`` hands out work items (image blocks, scratch slots) atomically to whichever thread
asks first; ``voidptr`` turns an address into a pointer for ``numba.carray``.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def fetch_add(typingctx, array, index):
    """``old = array[index]; array[index] += 1`` atomically (int64 array); returns old."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64):
        return None
    sig = types.int64(array, types.intp)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "seq_cst")
    return sig, codegen


@intrinsic
def voidptr(typingctx, address):
    """An int64 address as a void pointer (for numba.carray)."""
    sig = types.voidptr(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return sig, codegen


@intrinsic
def cblas_gemm(typingctx, fn, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc):
    """Call the ILP64 ``cblas_?gemm`` at address ``fn`` (row-major): C = alpha op(A) op(B) + beta
    C. A, B, C are int64 addresses; alpha and beta are float32 for sgemm, float64 for dgemm."""
    if alpha not in (types.float32, types.float64) or beta != alpha:
        return None
    sig = types.void(fn, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        real = ir.FloatType() if signature.args[6] == types.float32 else ir.DoubleType()
        ptr = real.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, real, ptr, i64,
                                               ptr, i64, real, ptr, i64])
        callee = builder.inttoptr(args[0], fnty.as_pointer())

        def as_i64(v):
            return builder.sext(v, i64) if v.type.width < 64 else v

        def as_i32(v):
            return builder.trunc(v, i32) if v.type.width > 32 else v
        order = ir.Constant(i32, 101)  # CblasRowMajor
        call_args = [order, as_i32(args[1]), as_i32(args[2]), as_i64(args[3]), as_i64(args[4]),
                     as_i64(args[5]), args[6], builder.inttoptr(args[7], ptr), as_i64(args[8]),
                     builder.inttoptr(args[9], ptr), as_i64(args[10]), args[11],
                     builder.inttoptr(args[12], ptr), as_i64(args[13])]
        builder.call(callee, call_args)
        return context.get_dummy_value()
    return sig, codegen
