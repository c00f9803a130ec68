"""Solving the unknown band's system: exactly where it fits, else the way pymatting does.

``solve_band`` solves the system exactly (``direct``: block Cholesky along the band's
breadth-first levels) when that factor fits in ``DIRECT_MAX_BYTES``; the rest of this module is
the iterative solve, for wider bands and for blocks that rounding makes indefinite.

rembg's ``estimate_alpha_cf`` runs conjugate gradients preconditioned by pymatting's
thresholded incomplete Cholesky factor. The factorisation is the costly part, and it runs on
one core: each column needs the columns before it. Here:

- The band is cut in two by one level of nested dissection: breadth-first levels from a far
  end of the band, the middle level as separator, the levels before it as one half and the
  levels after it as the other. No entry of the matrix joins the halves, so no entry of the
  factor does either: the halves' columns are factorised side by side, then the separator's
  (a few hundred columns). The unknowns of each half are numbered from the separator outwards
  (by decreasing level), which leaves the factor as sparse as reverse Cuthill-McKee's.
- The factorisation is pymatting's left-looking thresholded incomplete Cholesky (same
  arithmetic, same discard rule, same diagonal shifts), made to run over a range of columns.
  Each half keeps its own row lists and logs what it takes from the separator's diagonal; the
  separator's columns then start from the state one pass over both halves would have left.
  The factor is pymatting's ``ichol`` of the same numbered matrix, bit for bit (tested).
- Applying the factor runs the halves' forward and backward substitutions side by side too.
- CG (pymatting's, tolerance 1e-7 as rembg) starts from the caller's first guess, the mask.

The renumbered matrix is built in one pass (``_renumber``), not by scipy's fancy indexing.
Measurements and the alternatives not kept: docs/decisions/0007.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import scipy.sparse

from .cores import side_by_side
from .direct import NotPositiveDefinite, plan_direct, solve_direct
from .errors import UnsolvableTrimap

__all__ = [
    "BandSplit",
    "DIRECT_MAX_BYTES",
    "IncompleteCholesky",
    "band_levels",
    "incomplete_cholesky",
    "solve_band",
    "split_band",
]


def _pymatting_cg() -> Callable[..., np.ndarray]:
    """pymatting's conjugate gradient (rembg's solver), loaded from its module file alone (it
    needs only numpy): importing the pymatting package first compiles every numba kernel it
    has, about 40 s on a fresh install here, for kernels this service never calls."""
    package = importlib.util.find_spec("pymatting")  # found, not imported
    if package is None or not package.submodule_search_locations:
        raise ImportError("pymatting is not installed (make install installs it)")
    path = Path(package.submodule_search_locations[0]) / "solver" / "cg.py"
    spec = importlib.util.spec_from_file_location("pymatting_cg", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    solve: Callable[..., np.ndarray] = module.cg
    return solve


cg = _pymatting_cg()

RTOL = 1e-7  # pymatting's default, which rembg uses
DISCARD_THRESHOLD = 1e-4  # pymatting's default; sparser factors needed shifts on some images
# pymatting's diagonal shifts, tried in turn when a factorisation meets a non-positive pivot.
_SHIFTS = (0.0, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
_MAX_NNZ = int(4e9 / 16)  # pymatting's cap
# The factor's first allocation, per nonzero of the matrix (fill measured on the fixtures:
# 2.5-2.8). pymatting reserves its whole cap (3 GB of address space) for every factor; that
# costs nothing where memory is overcommitted, but fails on hosts that forbid overcommit.
_FIRST_FILL = 8
# The exact solve's factor grows as the band's length times its width squared
# (docs/performance.md has its size on the fixtures). Wider bands take the iterative solve,
# whose factor is several times sparser, though slower to make and to apply.
DIRECT_MAX_BYTES = 2 << 30

# --- splitting the band -------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _breadth_first(indptr, indices, start, level, base, queue):
    """Levels (from ``base``) of start's component; returns how many nodes it has, in queue."""
    level[start] = base
    queue[0] = start
    head, tail = 0, 1
    while head < tail:
        node = queue[head]
        head += 1
        for k in range(indptr[node], indptr[node + 1]):
            other = indices[k]
            if level[other] < 0:
                level[other] = level[node] + 1
                queue[tail] = other
                tail += 1
    return tail


@numba.njit(cache=True, nogil=True)
def _band_levels(indptr, indices):
    """Breadth-first levels of every node, from a far end of each connected piece.

    The far end is the last node reached from the piece's first node (a pseudo-peripheral
    node, as in Cuthill-McKee). Pieces follow each other with one empty level in between, so
    that cutting at any level never joins two pieces.
    """
    size = indptr.shape[0] - 1
    level = np.full(size, -1, np.int64)
    queue = np.empty(size, np.int64)
    base = 0
    for node in range(size):
        if level[node] >= 0:
            continue
        count = _breadth_first(indptr, indices, node, level, base, queue)
        far = queue[count - 1]
        for q in range(count):
            level[queue[q]] = -1
        count = _breadth_first(indptr, indices, far, level, base, queue)
        base = level[queue[count - 1]] + 2
    return level


@dataclass(frozen=True)
class BandSplit:
    """A numbering of the unknowns: first half, second half, separator (``order[new] = old``)."""

    order: np.ndarray
    first: int  # unknowns in the first half
    second: int  # unknowns in the second half; the separator is the rest

    @property
    def separator_start(self) -> int:
        return self.first + self.second


def band_levels(matrix: scipy.sparse.csr_matrix) -> np.ndarray:
    """Each unknown's breadth-first level: an entry of the matrix never joins levels more than
    one apart, and pieces of the band are an empty level apart."""
    return _band_levels(matrix.indptr, matrix.indices)  # as they are: a copy is not free


def split_band(matrix: scipy.sparse.csr_matrix, level: np.ndarray | None = None) -> BandSplit:
    """Cut the band at a middle breadth-first level: no entry of the matrix joins the halves."""
    size = matrix.shape[0]
    level = band_levels(matrix) if level is None else level
    per_level = np.bincount(level)
    after = size - np.cumsum(per_level)
    before = size - after - per_level
    # The separator's columns run on one core after the halves: a level counts once as the
    # larger half's and once as its own. A level between pieces of the band costs nothing.
    middle = int(np.argmin(np.maximum(before, after) + per_level))
    # Decreasing level inside each half: from the separator outwards, reverse Cuthill-McKee's
    # direction for the first half, and for the second it puts the separator's neighbours last.
    by_level = np.argsort(-level, kind="stable")
    ranked = level[by_level]
    first, second = by_level[ranked < middle], by_level[ranked > middle]
    order = np.concatenate([first, second, by_level[ranked == middle]])
    return BandSplit(order, first.size, second.size)


# --- the factorisation --------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _factorise_columns(
    first_column,
    end_column,
    a_values,
    a_rows,
    a_starts,
    values,
    rows,
    starts,
    ends,
    position,
    room_end,
    next_entry,
    row_lists,
    diagonal,
    column,
    in_column,
    column_rows,
    discard_threshold,
    log_start,
    log_rows,
    log_amounts,
    failed,
):
    """pymatting's left-looking thresholded incomplete Cholesky, over a range of columns.

    Column j of L is written at ``values[starts[j]:ends[j]]`` (diagonal first, then rows in
    increasing order), from ``position`` on. ``row_lists`` links, for each row i, the earlier
    columns whose next entry below the diagonal is in row i (``next_entry[k]`` indexes that
    entry); ``diagonal`` holds A's diagonal less what the columns so far took from it.
    ``column``, ``in_column`` and ``column_rows`` are scratch, zero/False on entry and exit.
    What the columns take from the diagonal of rows >= ``log_start`` (the separator's, shared
    with the other half) is logged in order instead, to be taken later in the same order.
    Returns the position after the last entry (-1 on a non-positive pivot, -2 out of room,
    -3 when ``failed[0]`` was set: the other half failed, so the attempt is lost anyway) and
    how many amounts were logged. A failure sets ``failed[0]``, for the other half to see.
    """
    count = 0
    logged = 0
    for j in range(first_column, end_column):
        for idx in range(a_starts[j], a_starts[j + 1]):  # A's column j below the diagonal
            i = a_rows[idx]
            if i > j and a_values[idx] != 0.0:
                column[i] += a_values[idx]
                if not in_column[i]:
                    in_column[i] = True
                    column_rows[count] = i
                    count += 1
        k = row_lists[j]
        while k != -1:  # every earlier column k with an entry in row j
            entry = next_entry[k]
            later = row_lists[k]
            l_jk = values[entry]
            entry += 1
            if entry < ends[k]:
                next_entry[k] = entry  # k moves on to the list of its next row
                i = rows[entry]
                row_lists[k] = row_lists[i]
                row_lists[i] = k
                for idx in range(entry, ends[k]):
                    i = rows[idx]
                    column[i] -= values[idx] * l_jk
                    if not in_column[i]:
                        in_column[i] = True
                        column_rows[count] = i
                        count += 1
            k = later
        if failed[0]:
            return -3, logged
        if diagonal[j] <= 0.0:
            failed[0] = 1
            return -1, logged
        if position + 1 + count > room_end:
            failed[0] = 1
            return -2, logged
        pivot = np.sqrt(diagonal[j])
        diagonal[j] = pivot
        starts[j] = position
        values[position] = pivot
        rows[position] = j
        position += 1
        next_entry[j] = position
        for i in np.sort(column_rows[:count]):
            l_ij = column[i] / pivot
            if i >= log_start:
                if logged == log_rows.shape[0]:
                    failed[0] = 1
                    return -2, logged  # the log is out of room (the retry clears the scratch)
                log_rows[logged] = i
                log_amounts[logged] = l_ij * l_ij
                logged += 1
            else:
                diagonal[i] -= l_ij * l_ij  # pymatting keeps what it discards on the diagonal
            if abs(l_ij) > discard_threshold:
                values[position] = l_ij
                rows[position] = i
                position += 1
            column[i] = 0.0
            in_column[i] = False
        count = 0
        ends[j] = position
        if starts[j] + 1 < position:
            i = rows[starts[j] + 1]
            row_lists[j] = row_lists[i]
            row_lists[i] = j
    return position, logged


@numba.njit(cache=True, nogil=True)
def _join_row_lists(first_lists, second_lists, first_end, separator_start):
    """The row lists one pass over both halves would have left.

    Each half's own rows and columns keep their links. A separator row's list is the second
    half's columns, then the first half's: one pass would have pushed the second half's
    columns onto the front of the list the first half left.
    """
    joined = first_lists.copy()
    joined[first_end:separator_start] = second_lists[first_end:separator_start]
    for i in range(separator_start, joined.shape[0]):
        if second_lists[i] == -1:
            continue
        k = second_lists[i]
        while joined[k] != -1:
            k = joined[k]
        joined[k] = first_lists[i]
        joined[i] = second_lists[i]
    return joined


@numba.njit(cache=True, nogil=True)
def _forward(values, rows, starts, ends, x, first_column, end_column, spill_start, spill):
    """x <- L^-1 x over a range of columns; what falls on rows >= spill_start goes to spill."""
    for j in range(first_column, end_column):
        first = starts[j]
        xj = x[j] / values[first]
        x[j] = xj
        for k in range(first + 1, ends[j]):
            i = rows[k]
            if i >= spill_start:
                spill[i - spill_start] += values[k] * xj
            else:
                x[i] -= values[k] * xj


@numba.njit(cache=True, nogil=True)
def _backward(values, rows, starts, ends, x, first_column, end_column):
    """x <- L^-T x over a range of columns, the later rows of x being final already."""
    for j in range(end_column - 1, first_column - 1, -1):
        first = starts[j]
        total = x[j]
        for k in range(first + 1, ends[j]):
            total -= values[k] * x[rows[k]]
        x[j] = total / values[first]


class IncompleteCholesky:
    """The preconditioner: applying it solves L L^T z = r, the halves side by side."""

    def __init__(
        self,
        values: np.ndarray,
        rows: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        split: tuple[int, int],
    ) -> None:
        self.values, self.rows, self.starts, self.ends = values, rows, starts, ends
        self.first_end = split[0]
        self.separator_start = split[0] + split[1]

    def lower(self) -> scipy.sparse.csc_matrix:
        """L as one compact CSC matrix (diagonal first in each column)."""
        lengths = self.ends - self.starts
        pointers = np.concatenate([[0], np.cumsum(lengths)])
        picks = np.concatenate(
            [np.arange(s, e) for s, e in zip(self.starts, self.ends, strict=True)]
        )
        size = self.starts.size
        return scipy.sparse.csc_matrix(
            (self.values[picks], self.rows[picks], pointers), shape=(size, size)
        )

    def __call__(self, residual: np.ndarray) -> np.ndarray:
        x = np.array(residual, dtype=np.float64, copy=True)
        size, first_end, separator = x.size, self.first_end, self.separator_start
        factor = (self.values, self.rows, self.starts, self.ends)
        spills = np.zeros((2, size - separator))
        side_by_side(
            lambda: _forward(*factor, x, 0, first_end, separator, spills[0]),
            lambda: _forward(*factor, x, first_end, separator, separator, spills[1]),
        )
        x[separator:] -= spills[0] + spills[1]
        _forward(*factor, x, separator, size, size, spills[0])
        _backward(*factor, x, separator, size)
        side_by_side(
            lambda: _backward(*factor, x, 0, first_end),
            lambda: _backward(*factor, x, first_end, separator),
        )
        return x


def _factorise(
    matrix: scipy.sparse.csc_matrix,
    split: tuple[int, int],
    shift: float,
    discard_threshold: float,
    rooms: list[int],
) -> IncompleteCholesky | int:
    """One attempt at one shift: the factor, or pymatting's failure code (-1 pivot, -2 room).

    The halves' columns are factorised side by side, then the separator's, from the state one
    pass over both halves in turn would have left: the same factor, bit for bit.
    """
    size = matrix.shape[0]
    first_end, separator = split[0], split[0] + split[1]
    a_rows = matrix.indices.astype(np.int32)
    a_starts = matrix.indptr.astype(np.int64)
    values = np.empty(sum(rooms), np.float64)
    rows = np.empty(sum(rooms), np.int32)
    starts = np.zeros(size, np.int64)
    ends = np.zeros(size, np.int64)
    next_entry = np.zeros(size, np.int64)
    diagonal = matrix.diagonal() + shift
    offsets = np.concatenate([[0], np.cumsum(rooms)])
    log_rows = np.empty(rooms[1] // 4 + size - separator, np.int64)
    log_amounts = np.empty(log_rows.size, np.float64)
    failed = np.zeros(1, np.int64)  # set by the half that fails, so that the other stops

    def columns(
        first_column: int,
        end_column: int,
        part: int,
        lists: np.ndarray,
        own_diagonal: np.ndarray,
        scratch: tuple,
        log_start: int,
    ) -> tuple[int, int]:
        return _factorise_columns(
            first_column,
            end_column,
            matrix.data,
            a_rows,
            a_starts,
            values,
            rows,
            starts,
            ends,
            offsets[part],
            offsets[part + 1],
            next_entry,
            lists,
            own_diagonal,
            *scratch,
            discard_threshold,
            log_start,
            log_rows,
            log_amounts,
            failed,
        )

    def scratch() -> tuple:
        return np.zeros(size), np.zeros(size, np.bool_), np.empty(size, np.int64)

    first_lists, second_lists = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
    first_scratch = scratch()
    (first_end_status, _), (second_end_status, logged) = side_by_side(
        lambda: columns(0, first_end, 0, first_lists, diagonal, first_scratch, size),
        lambda: columns(first_end, separator, 1, second_lists, diagonal, scratch(), separator),
    )
    failures = [status for status in (first_end_status, second_end_status) if status in (-1, -2)]
    if failures:
        return min(failures)  # room first; the retry at the same shift then meets the pivot
    # The second half's share of the separator's diagonal, taken after the first half's.
    np.subtract.at(diagonal, log_rows[:logged], log_amounts[:logged])
    lists = _join_row_lists(first_lists, second_lists, first_end, separator)
    status, _ = columns(separator, size, 2, lists, diagonal, first_scratch, size)
    if status < 0:
        return status
    return IncompleteCholesky(values, rows, starts, ends, split)


def _within_cap(rooms: list[int], cap: int) -> list[int]:
    """The rooms, scaled down together if they add up to more than ``cap``."""
    total = sum(rooms)
    return rooms if total <= cap else [room * cap // total for room in rooms]


def incomplete_cholesky(
    matrix: scipy.sparse.csc_matrix,
    split: tuple[int, int] | None = None,
    discard_threshold: float = DISCARD_THRESHOLD,
    first_fill: int = _FIRST_FILL,
    max_nonzeros: int = _MAX_NNZ,
) -> IncompleteCholesky:
    """pymatting's ``ichol`` (same shifts, same factor), without its printed warnings.

    ``split`` (first half, second half) says how the rows are numbered (see ``split_band``);
    without it the whole matrix is one half. Room for each part of the factor starts at
    ``first_fill`` times its columns' nonzeros (the separator's columns may fill in whole), and
    grows to ``max_nonzeros`` (pymatting's cap) if the factor needs more. Raises ValueError
    where pymatting's does, so that matting falls back as rembg's would.
    """
    matrix = matrix.tocsc()
    matrix.sum_duplicates()  # canonical: sorted row indices, as the factorisation expects
    size = matrix.shape[0]
    split = split or (size, 0)
    bounds = (0, split[0], split[0] + split[1], size)
    column_nonzeros = np.diff(matrix.indptr)
    rooms = []
    for part in range(3):
        columns = bounds[part + 1] - bounds[part]
        whole = columns * (columns + 1) // 2 if part == 2 else 0
        nonzeros = int(column_nonzeros[bounds[part] : bounds[part + 1]].sum())
        rooms.append(first_fill * nonzeros + columns + whole)
    rooms = _within_cap(rooms, max_nonzeros)
    shifts = list(_SHIFTS)
    while shifts:
        factor = _factorise(matrix, split, shifts[0], discard_threshold, rooms)
        if isinstance(factor, IncompleteCholesky):
            return factor
        if factor == -2:  # out of room: the same shift again, with more room, up to the cap
            if sum(rooms) > max_nonzeros - len(rooms):  # at the cap, but for rounding
                raise UnsolvableTrimap("the incomplete Cholesky factor outgrew its bound")
            rooms = _within_cap([4 * room + size for room in rooms], max_nonzeros)
            continue
        shifts.pop(0)  # -1: a pivot was not positive; pymatting's next shift
    raise UnsolvableTrimap("the matting system stayed indefinite under every diagonal shift")


@numba.njit(cache=True, nogil=True)
def _renumber(indptr, indices, data, order, position):
    """Rows ``order`` of a CSR matrix, columns renumbered by ``position`` (order's inverse) and
    sorted in each row: the CSR arrays of matrix[order][:, order]."""
    size = order.shape[0]
    new_indptr = np.zeros(size + 1, np.int64)
    for new in range(size):
        old = order[new]
        new_indptr[new + 1] = new_indptr[new] + indptr[old + 1] - indptr[old]
    new_indices = np.empty(new_indptr[size], np.int32)
    new_data = np.empty(new_indptr[size], np.float64)
    for new in range(size):
        old = order[new]
        start = new_indptr[new]
        for k in range(indptr[old], indptr[old + 1]):  # insertion sort: rows hold 25 at most
            column, value = position[indices[k]], data[k]
            slot = start + k - indptr[old]
            while slot > start and new_indices[slot - 1] > column:
                new_indices[slot] = new_indices[slot - 1]
                new_data[slot] = new_data[slot - 1]
                slot -= 1
            new_indices[slot] = column
            new_data[slot] = value
    return new_indptr, new_indices, new_data


def _numbered(matrix: scipy.sparse.csr_matrix, order: np.ndarray) -> tuple:
    """The CSR arrays of matrix[order][:, order] (indptr, indices, data)."""
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    arrays = _renumber(matrix.indptr.astype(np.int64), matrix.indices, matrix.data, order, position)
    return arrays[::-1]


def solve_band(
    matrix: scipy.sparse.csr_matrix,
    rhs: np.ndarray,
    first_guess: np.ndarray,
    direct_max_bytes: int = DIRECT_MAX_BYTES,
) -> np.ndarray:
    """Solve the band's system (see ``system.band_system``).

    Exactly (``direct``) when its factor fits in ``direct_max_bytes``; otherwise, or
    should rounding make a block of it indefinite, as pymatting does, to its tolerance.
    """
    level = band_levels(matrix)
    plan = plan_direct(level)
    if plan.factor_bytes <= direct_max_bytes:
        try:
            return solve_direct(matrix, rhs, plan)
        except NotPositiveDefinite:
            pass  # pymatting's way copes: it shifts the diagonal until the factor exists
    split = split_band(matrix, level)
    order = split.order
    arrays = _numbered(matrix, order)
    shape = matrix.shape
    # The matrix is symmetric up to rounding (1e-10 on animal-3), so its rows serve as the
    # factorisation's columns: no transpose.
    rows = scipy.sparse.csr_matrix(arrays, shape=shape)
    columns = scipy.sparse.csc_matrix(arrays, shape=shape)
    factor = incomplete_cholesky(columns, (split.first, split.second))
    solution = np.empty_like(rhs)
    solution[order] = cg(rows, rhs[order], x0=first_guess[order], M=factor, rtol=RTOL)
    return solution
