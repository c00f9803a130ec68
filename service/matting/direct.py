"""An exact solve of the band's system: block Cholesky along its breadth-first levels.

Numbered by breadth-first level (``solver``'s levels: an edge of the matrix never joins
levels more than one apart), the band's matrix is block tridiagonal. Its Cholesky factor has no
fill outside those blocks: each level's block is the level's own matrix less what the level
before it passes on (the Schur complement, W W^T with W = C L^-T, C the coupling between the two
levels). The band is a ribbon along the outline, so its levels are short cross-cuts (on animal-3:
827 levels of 167 unknowns on average): dense blocks that BLAS factorises fast, where the
thresholded incomplete Cholesky is a chain of scattered scalar updates.

As in ``solver``, the levels are factorised from both ends of the band towards a middle
level (the separator), the two chains side by side, each applying what it passes on to the
separator; then the separator. The forward substitution runs with the factorisation (the
right-hand side is known), the backward one outwards from the separator, the two chains side by
side again. Each coupling has a few entries a row, so W's rows start with zeros: the triangular
solve and the Schur update skip them run by run (``_staircase``).

The result is the system's exact solution (to rounding), so it needs no iterations, and it
differs from rembg's (conjugate gradients to a relative residual of 1e-7) by much less than
1/255. The cost is known before any work: ``DirectPlan`` tells the caller how many bytes the
factor takes, so that very wide bands can keep the iterative solve.

The dense kernels are LAPACK/BLAS (scipy's cython_blas/cython_lapack, called from numba without
the GIL), each on one thread: the two chains already use both cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import types
from numba.extending import get_cython_function_address

from .cores import side_by_side

__all__ = ["DirectPlan", "NotPositiveDefinite", "plan_direct", "solve_direct"]


def _fortran(module: str, name: str, arguments: int) -> types.ExternalFunction:
    """A BLAS/LAPACK routine from scipy's Cython tables, every argument a pointer (as intp).

    Registered under a symbol of our own and called as an external function, not through a
    ctypes pointer, so that numba can cache the kernels that call it (a ctypes pointer is a
    dynamic global, which numba will not cache: it would compile them at every start).
    """
    symbol = f"rembg_stream_{name}"
    llvm.add_symbol(symbol, get_cython_function_address(f"scipy.linalg.cython_{module}", name))
    return types.ExternalFunction(symbol, types.void(*([types.intp] * arguments)))


_dpotrf = _fortran("lapack", "dpotrf", 5)  # uplo, n, a, lda, info
_dtrsm = _fortran("blas", "dtrsm", 11)  # side, uplo, transa, diag, m, n, alpha, a, lda, b, ldb
_dsyrk = _fortran("blas", "dsyrk", 10)  # uplo, trans, n, k, alpha, a, lda, beta, c, ldc
_dgemm = _fortran("blas", "dgemm", 13)  # ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc
_dgemv = _fortran("blas", "dgemv", 11)  # trans, m, n, alpha, a, lda, x, incx, beta, y, incy
_dtrsv = _fortran("blas", "dtrsv", 8)  # uplo, trans, diag, n, a, lda, x, incx


class NotPositiveDefinite(ValueError):
    """A level's block lost positive definiteness to rounding; the caller solves iteratively."""


# --- the dense steps (column-major blocks in flat float64 arrays) -----------------------------
# Every argument goes by address. The constants are global arrays (numba bakes them into the
# compiled code); the integers live in a local array that each wrapper reads after the call,
# so that it is still alive during the call.

_LOWER, _RIGHT = np.frombuffer(b"L", np.uint8), np.frombuffer(b"R", np.uint8)
_PLAIN, _TRANSPOSED = np.frombuffer(b"N", np.uint8), np.frombuffer(b"T", np.uint8)
_ONE, _MINUS_ONE = np.array([1.0]), np.array([-1.0])


@numba.njit(cache=True, nogil=True)
def _cholesky(block, size):
    """block (size x size, lower triangle) <- its Cholesky factor; LAPACK's info (0: done)."""
    ints = np.array([size, 0], np.int32)  # n, info
    _dpotrf(
        _LOWER.ctypes.data,
        ints[0:].ctypes.data,
        block.ctypes.data,
        ints[0:].ctypes.data,
        ints[1:].ctypes.data,
    )
    return ints[1]


# A coupling's rows are cut into this many runs. The coupling C (the next level's rows, this
# level's columns) has a few entries a row, so row r of W = C L^-T is zero before the first
# column p_r where C's row has an entry, and the rows of a run share their zeros up to the
# run's smallest p: a staircase. The triangular solve and W W^T skip those zeros: on animal-3
# 45-50% of the dense flops are left with 8 runs (35-40% would be left with one run a row).
_RUNS = 8
_BYTES = 8  # of a float64


@numba.njit(cache=True, nogil=True)
def _staircase(
    indptr, indices, order, position, row_start, row_end, column_start, column_end, stairs
):
    """The runs of the coupling of rows row_start:row_end, columns column_start:column_end:
    stairs[0] = their count, stairs[1:count + 2] their row bounds (within the block),
    stairs[_RUNS + 2 + g] run g's first column with an entry (columns: none)."""
    rows, columns = row_end - row_start, column_end - column_start
    count = min(_RUNS, rows)
    stairs[0] = count
    for g in range(count + 1):
        stairs[1 + g] = g * rows // count
    for g in range(count):
        first = columns
        for r in range(stairs[1 + g], stairs[2 + g]):
            row = order[row_start + r]
            for e in range(indptr[row], indptr[row + 1]):
                j = position[indices[e]]
                if column_start <= j < column_end:
                    first = min(first, j - column_start)
        stairs[_RUNS + 2 + g] = first


@numba.njit(cache=True, nogil=True)
def _right_solve_transposed(factor, size, coupling, rows, stairs):
    """coupling (rows x size) <- coupling L^-T, run by run from each run's first column."""
    for g in range(stairs[0]):
        top, bottom, first = stairs[1 + g], stairs[2 + g], stairs[_RUNS + 2 + g]
        if bottom == top or first == size:
            continue  # an empty run, or rows with no entry: zero, and they stay zero
        ints = np.array([bottom - top, size - first, size, rows], np.int32)  # m, n, lda, ldb
        _dtrsm(
            _RIGHT.ctypes.data,
            _LOWER.ctypes.data,
            _TRANSPOSED.ctypes.data,
            _PLAIN.ctypes.data,
            ints[0:].ctypes.data,
            ints[1:].ctypes.data,
            _ONE.ctypes.data,
            factor.ctypes.data + _BYTES * (first + first * size),
            ints[2:].ctypes.data,
            coupling.ctypes.data + _BYTES * (top + first * rows),
            ints[3:].ctypes.data,
        )
        stairs[0] += 0 * ints[0]  # ints lives until here


@numba.njit(cache=True, nogil=True)
def _subtract_gram(block, size, passed, width, stairs):
    """block (size x size, lower) -= passed passed^T, passed being size x width with the
    staircase ``stairs``: each run's rows times themselves, and times the runs above it, from
    the run's first column (before it, the run's rows are zero)."""
    for g in range(stairs[0]):
        top, bottom, first = stairs[1 + g], stairs[2 + g], stairs[_RUNS + 2 + g]
        if bottom == top or first == width:
            continue
        ints = np.array([bottom - top, width - first, size, top], np.int32)  # m, k, ld, above
        m, k, ld = ints[0:].ctypes.data, ints[1:].ctypes.data, ints[2:].ctypes.data
        run = passed.ctypes.data + _BYTES * (top + first * size)
        _dsyrk(
            _LOWER.ctypes.data,
            _PLAIN.ctypes.data,
            m,
            k,
            _MINUS_ONE.ctypes.data,
            run,
            ld,
            _ONE.ctypes.data,
            block.ctypes.data + _BYTES * (top + top * size),
            ld,
        )
        if top > 0:
            _dgemm(
                _PLAIN.ctypes.data,
                _TRANSPOSED.ctypes.data,
                m,
                ints[3:].ctypes.data,
                k,
                _MINUS_ONE.ctypes.data,
                run,
                ld,
                passed.ctypes.data + _BYTES * first * size,
                ld,
                _ONE.ctypes.data,
                block.ctypes.data + _BYTES * top,
                ld,
            )
        stairs[0] += 0 * ints[0]  # ints lives until here


@numba.njit(cache=True, nogil=True)
def _subtract_product(passed, rows, width, vector, out):
    """out (rows) -= passed (rows x width) @ vector."""
    ints = np.array([rows, width, 1], np.int32)  # m, n, increment
    m, n, one = ints[0:].ctypes.data, ints[1:].ctypes.data, ints[2:].ctypes.data
    _dgemv(
        _PLAIN.ctypes.data,
        m,
        n,
        _MINUS_ONE.ctypes.data,
        passed.ctypes.data,
        m,
        vector.ctypes.data,
        one,
        _ONE.ctypes.data,
        out.ctypes.data,
        one,
    )
    return ints[0]


@numba.njit(cache=True, nogil=True)
def _triangular_solve(factor, size, vector, transposed):
    """vector <- L^-1 vector (or L^-T vector)."""
    ints = np.array([size, 1], np.int32)  # n, increment
    n, one = ints[0:].ctypes.data, ints[1:].ctypes.data
    trans = _TRANSPOSED if transposed else _PLAIN
    _dtrsv(
        _LOWER.ctypes.data,
        trans.ctypes.data,
        _PLAIN.ctypes.data,
        n,
        factor.ctypes.data,
        n,
        vector.ctypes.data,
        one,
    )
    return ints[0]


# --- blocks of the matrix, read in the plan's numbering --------------------------------------
# The matrix keeps its own numbering: ``order[new] = old``, ``position[old] = new``. A level is
# a range of new numbers, so its rows are order[start:end], and an entry's column is in a level
# when position[column] falls in its range. (Renumbering the matrix first would cost more.)


@numba.njit(cache=True, nogil=True)
def _gather(
    indptr, indices, data, order, position, row_start, row_end, column_start, column_end, out
):
    """out (column-major, rows x columns) <- the matrix's block, zeros where it has no entry.

    A level's own block is zeroed on and below the diagonal only: its factorisation reads
    nothing above it (what the matrix has there is written, and never read).
    """
    rows = row_end - row_start
    if row_start == column_start:
        for j in range(rows):
            out[j * rows + j : (j + 1) * rows] = 0.0
    else:
        out[: rows * (column_end - column_start)] = 0.0
    for i in range(row_start, row_end):
        row = order[i]
        for e in range(indptr[row], indptr[row + 1]):
            j = position[indices[e]]
            if column_start <= j < column_end:
                out[(i - row_start) + (j - column_start) * rows] = data[e]


@numba.njit(cache=True, nogil=True)
def _coupled_product(
    indptr, indices, data, order, position, row_start, row_end, column_start, column_end, x, out
):
    """out (columns) <- C^T x[rows], C the block of the given rows and columns."""
    out[:] = 0.0
    for i in range(row_start, row_end):
        xi = x[i]
        row = order[i]
        for e in range(indptr[row], indptr[row + 1]):
            j = position[indices[e]]
            if column_start <= j < column_end:
                out[j - column_start] += data[e] * xi


# --- the two passes over a chain of levels --------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _forward_chain(
    indptr,
    indices,
    data,
    order,
    position,
    offsets,
    chain,
    towards,
    rhs,
    y,
    factors,
    factor_starts,
    block_out,
    rhs_out,
):
    """Factorise the chain's levels in turn (forward substitution alongside).

    ``chain`` lists adjacent levels, ending next to ``towards`` (the separator, or -1). Each
    level's factor goes to ``factors[factor_starts[k]:]``, its y to ``y``. What the last level
    passes on to ``towards`` is applied here, side by side with the other chain, to the zeros
    of ``block_out`` (-W W^T, lower triangle) and ``rhs_out`` (-W y). Returns 1 when it passed
    something on, 0 when not, or -(k + 1) when level k's block was not positive definite.
    """
    widest = 0
    for k in chain:
        widest = max(widest, offsets[k + 1] - offsets[k])
    if towards >= 0:
        widest = max(widest, offsets[towards + 1] - offsets[towards])
    passed = np.empty(widest * widest)
    stairs = np.empty(2 * _RUNS + 2, np.int64)
    width = 0  # columns of ``passed``: the size of the level before (0: nothing passed on)
    previous_start = 0
    for step in range(chain.shape[0]):
        k = chain[step]
        start, end = offsets[k], offsets[k + 1]
        size = end - start
        if size == 0:
            width = 0
            continue
        block = factors[factor_starts[k] : factor_starts[k] + size * size]
        _gather(indptr, indices, data, order, position, start, end, start, end, block)
        values = rhs[start:end].copy()
        if width > 0:
            _subtract_gram(block, size, passed, width, stairs)
            _subtract_product(
                passed, size, width, y[previous_start : previous_start + width], values
            )
        if _cholesky(block, size) != 0:
            return -(k + 1)
        _triangular_solve(block, size, values, False)
        y[start:end] = values
        following = chain[step + 1] if step + 1 < chain.shape[0] else towards
        width = 0
        if following >= 0:
            rows = offsets[following + 1] - offsets[following]
            if rows > 0:
                _gather(
                    indptr,
                    indices,
                    data,
                    order,
                    position,
                    offsets[following],
                    offsets[following + 1],
                    start,
                    end,
                    passed,
                )
                _staircase(
                    indptr,
                    indices,
                    order,
                    position,
                    offsets[following],
                    offsets[following + 1],
                    start,
                    end,
                    stairs,
                )
                _right_solve_transposed(block, size, passed, rows, stairs)
                width = size
        previous_start = start
    if towards >= 0 and width > 0:
        rows = offsets[towards + 1] - offsets[towards]
        block_out[: rows * rows] = 0.0
        rhs_out[:rows] = 0.0
        _subtract_gram(block_out, rows, passed, width, stairs)
        _subtract_product(passed, rows, width, y[previous_start : previous_start + width], rhs_out)
        return 1
    return 0


@numba.njit(cache=True, nogil=True)
def _backward_chain(
    indptr, indices, data, order, position, offsets, chain, towards, y, x, factors, factor_starts
):
    """x for the chain's levels, outwards from ``towards`` (whose x is final already)."""
    for step in range(chain.shape[0] - 1, -1, -1):
        k = chain[step]
        start, end = offsets[k], offsets[k + 1]
        size = end - start
        if size == 0:
            continue
        block = factors[factor_starts[k] : factor_starts[k] + size * size]
        values = y[start:end].copy()
        following = chain[step + 1] if step + 1 < chain.shape[0] else towards
        if following >= 0 and offsets[following + 1] > offsets[following]:
            coupled = np.empty(size)
            _coupled_product(
                indptr,
                indices,
                data,
                order,
                position,
                offsets[following],
                offsets[following + 1],
                start,
                end,
                x,
                coupled,
            )
            _triangular_solve(block, size, coupled, False)
            values -= coupled
        _triangular_solve(block, size, values, True)
        x[start:end] = values


@numba.njit(cache=True, nogil=True)
def _separator(
    indptr,
    indices,
    data,
    order,
    position,
    offsets,
    level,
    rhs,
    y,
    x,
    factors,
    factor_starts,
    passed_blocks,
    passed_rhs,
):
    """Factorise the separator, its block less what both chains passed on, and solve its x.
    0, or -(level + 1) when its block is not positive definite."""
    start, end = offsets[level], offsets[level + 1]
    size = end - start
    if size == 0:
        return 0
    block = factors[factor_starts[level] : factor_starts[level] + size * size]
    _gather(indptr, indices, data, order, position, start, end, start, end, block)
    values = rhs[start:end].copy()
    for side in range(2):
        block += passed_blocks[side, : size * size]
        values += passed_rhs[side, :size]
    if _cholesky(block, size) != 0:
        return -(level + 1)
    _triangular_solve(block, size, values, False)
    y[start:end] = values
    _triangular_solve(block, size, values, True)
    x[start:end] = values
    return 0


# --- the plan and the solve -----------------------------------------------------------------


@dataclass(frozen=True)
class DirectPlan:
    """Levels numbered in order (``order[new] = old``), the chains and what they will cost."""

    order: np.ndarray
    offsets: np.ndarray  # level k is new unknowns offsets[k]:offsets[k+1]
    first: np.ndarray  # levels of the first chain, from the band's first end inwards
    second: np.ndarray  # levels of the second chain, from the other end inwards
    separator: int  # the level both chains end next to (-1: none)
    factor_bytes: int


def plan_direct(level: np.ndarray) -> DirectPlan:
    """Number the unknowns by level and cut the levels where the two chains' work balances."""
    sizes = np.bincount(level).astype(np.int64)
    count = sizes.size
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    order = np.argsort(level, kind="stable")
    s = sizes.astype(np.float64)
    following = np.concatenate([s[1:], [0.0]])
    # potrf s^3/3, trsm s^2 t, syrk s t^2 (t the next level's size): per level, either direction,
    # and what a level costs beyond its flops (calls, gathers, small blocks running slower), as
    # flops: measured on animal-3's two chains, one of wide levels and one of narrow ones
    work = s**3 / 3 + s * s * following + s * following * following + 3e6 * (s > 0)
    before = np.cumsum(work) - work
    after = work.sum() - before - work
    middle = int(np.argmin(np.maximum(before, after) + work)) if count > 2 else -1
    if middle < 0:
        first, second = np.arange(count, dtype=np.int64), np.empty(0, np.int64)
    else:
        first = np.arange(middle, dtype=np.int64)
        second = np.arange(count - 1, middle, -1, dtype=np.int64)
    return DirectPlan(order, offsets, first, second, middle, int((s * s).sum() * 8))


def solve_direct(
    matrix, rhs: np.ndarray, plan: DirectPlan, side_by_side: Callable = side_by_side
) -> np.ndarray:
    """Solve ``matrix`` (CSR, in its own numbering) x = rhs, exactly, as the plan says.

    ``side_by_side(first, second)`` runs the two chains (``cores.side_by_side``; a
    test runs them one after the other instead). Raises NotPositiveDefinite where a block is not (to
    rounding): the caller solves iteratively then.
    """
    order = plan.order
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    arguments = (
        matrix.indptr.astype(np.int64),
        matrix.indices,
        matrix.data,
        order,
        position,
        plan.offsets,
    )
    sizes = np.diff(plan.offsets)
    factor_starts = np.concatenate([[0], np.cumsum(sizes * sizes)])
    factors = np.empty(int(factor_starts[-1]))
    # Fault its pages in here, in one thread: both chains faulting their own at once made the
    # solve slower and noisier (docs/decisions/0001).
    factors[::512] = 0.0
    b = np.ascontiguousarray(rhs[order])
    y, x = np.empty_like(b), np.empty_like(b)
    separator = plan.separator
    separator_size = int(sizes[separator]) if separator >= 0 else 0
    chains = (plan.first, plan.second)
    # What each chain passes on to the separator; zeros where a chain passes nothing on.
    passed_blocks = np.zeros((2, max(separator_size, 1) ** 2))
    passed_rhs = np.zeros((2, max(separator_size, 1)))

    def forward(side: int):
        return lambda: _forward_chain(
            *arguments,
            chains[side],
            separator,
            b,
            y,
            factors,
            factor_starts,
            passed_blocks[side],
            passed_rhs[side],
        )

    statuses = side_by_side(forward(0), forward(1))
    failed = [status for status in statuses if status < 0]
    if failed:
        raise NotPositiveDefinite(f"level {-failed[0] - 1} of the band is not positive definite")
    if separator >= 0:
        status = _separator(
            *arguments, separator, b, y, x, factors, factor_starts, passed_blocks, passed_rhs
        )
        if status < 0:
            raise NotPositiveDefinite("the band's separator level is not positive definite")

    def backward(side: int):
        return lambda: _backward_chain(
            *arguments, chains[side], separator, y, x, factors, factor_starts
        )

    side_by_side(backward(0), backward(1))
    solution = np.empty_like(x)
    solution[order] = x
    return solution
