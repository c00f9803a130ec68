"""service.matting.solver: pymatting's incomplete Cholesky and CG, the band cut in two halves."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
from pymatting.preconditioner.ichol import ichol
from pymatting.solver.cg import cg

from service.matting.errors import UnsolvableTrimap
from service.matting.solver import DIRECT_MAX_BYTES, incomplete_cholesky, solve_band, split_band
from service.matting.system import band_system


def band(seed: int, shape=(48, 64)):
    """A matting system from a random image and a trimap with a wavy unknown band."""
    rng = np.random.default_rng(seed)
    image = rng.random((*shape, 3))
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    edge = shape[0] / 2 + 6 * np.sin(x / 5.0 + seed)
    trimap = np.where(y < edge - 4, 1.0, np.where(y > edge + 4, 0.0, 0.5))
    return band_system(image, trimap)


def split_system(seed: int, shape=(48, 64)):
    """band(seed), numbered by split_band: (matrix, rhs, split)."""
    matrix, rhs, _ = band(seed, shape)
    split = split_band(matrix)
    return matrix[split.order][:, split.order], rhs[split.order], split


def pymatting_factor(matrix, threshold=1e-4) -> scipy.sparse.csc_matrix:
    values, rows, starts = ichol(matrix.tocsc(), discard_threshold=threshold).Ltuple
    return scipy.sparse.csc_matrix((values, rows, starts), shape=matrix.shape)


def assert_same_factor(ours, theirs: scipy.sparse.csc_matrix) -> None:
    lower = ours.lower()
    assert np.array_equal(lower.indptr, theirs.indptr)
    assert np.array_equal(lower.indices, theirs.indices) and ours.rows.dtype == np.int32
    assert np.array_equal(lower.data, theirs.data)  # bit for bit


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("threshold", [1e-4, 1e-3])
def test_the_unsplit_factor_is_pymatting_ichols_bit_for_bit(seed, threshold):
    matrix, _, _ = band(seed)
    assert_same_factor(
        incomplete_cholesky(matrix.tocsc(), discard_threshold=threshold),
        pymatting_factor(matrix, threshold),
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [1e-4, 1e-3])
def test_the_halves_side_by_side_give_pymatting_ichols_factor_bit_for_bit(seed, threshold):
    """Of the matrix numbered halves-then-separator: the separator's columns included, which
    start from the row lists and diagonal joined from both halves."""
    matrix, _, split = split_system(seed, (64, 96))
    ours = incomplete_cholesky(matrix.tocsc(), (split.first, split.second), threshold)
    separator = matrix.shape[0] - split.separator_start
    assert split.first > 0 and split.second > 0 and separator > 0
    assert_same_factor(ours, pymatting_factor(matrix, threshold))


@pytest.mark.parametrize("seed", range(3))
def test_split_band_cuts_the_band_into_two_unjoined_halves(seed):
    matrix, _, _ = band(seed, (64, 96))
    split = split_band(matrix)
    size = matrix.shape[0]
    assert np.array_equal(np.sort(split.order), np.arange(size))
    numbered = matrix[split.order][:, split.order].tocoo()
    halves = np.digitize([numbered.row, numbered.col], [split.first, split.separator_start])
    assert not ((halves[0] == 0) & (halves[1] == 1)).any()  # no entry joins the halves
    assert abs(split.first - split.second) < 0.2 * size  # balanced: a middle level
    assert size - split.separator_start < 0.1 * size  # the separator is one level


def test_pieces_of_the_band_are_split_without_a_separator_between_them():
    """Two unjoined bands: the middle level falls between the pieces, or cuts one of them."""
    top, _, _ = band(0, (32, 64))
    both = scipy.sparse.block_diag([top, top], format="csr")
    split = split_band(both)
    numbered = both[split.order][:, split.order].tocoo()
    halves = np.digitize([numbered.row, numbered.col], [split.first, split.separator_start])
    assert not ((halves[0] == 0) & (halves[1] == 1)).any()
    assert split.first == top.shape[0] and split.second == top.shape[0]


def test_a_factor_that_outgrows_its_first_room_is_the_same_factor():
    matrix, _, split = split_system(1)
    parts = (split.first, split.second)
    roomy, cramped = (
        incomplete_cholesky(matrix.tocsc(), parts),
        incomplete_cholesky(matrix.tocsc(), parts, first_fill=0),
    )
    assert roomy.lower().nnz > matrix.shape[0]  # so room for the diagonal alone was too little
    assert_same_factor(cramped, roomy.lower())


def test_applying_the_unsplit_factor_equals_pymatting():
    matrix, _, _ = band(5)
    ours, theirs = incomplete_cholesky(matrix.tocsc()), ichol(matrix.tocsc())
    residual = np.random.default_rng(0).standard_normal(matrix.shape[0])
    np.testing.assert_array_equal(ours(residual), theirs(residual))


def test_applying_the_split_factor_inverts_l_lt():
    matrix, _, split = split_system(5, (64, 96))
    ours = incomplete_cholesky(matrix.tocsc(), (split.first, split.second))
    residual = np.random.default_rng(0).standard_normal(matrix.shape[0])
    applied = ours(residual)
    lower = ours.lower()
    np.testing.assert_allclose(lower @ (lower.T @ applied), residual, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(applied, ichol(matrix.tocsc())(residual), rtol=1e-9, atol=1e-12)


# Both ways solve_band has: exact (its factor fits the budget) and pymatting's iterative one.
BOTH_SOLVES = pytest.mark.parametrize(
    "direct_max_bytes", [DIRECT_MAX_BYTES, 0], ids=["exact", "iterative"]
)


@BOTH_SOLVES
def test_the_solution_is_pymatting_cgs(direct_max_bytes):
    matrix, rhs, _ = band(2)
    guess = np.full(matrix.shape[0], 0.5)
    ours = solve_band(matrix, rhs, guess, direct_max_bytes)
    theirs = cg(matrix, rhs, M=ichol(matrix.tocsc()), rtol=1e-10)
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.linalg.norm(matrix @ ours - rhs) <= 1e-7 * np.linalg.norm(rhs) * 1.0001


def test_an_indefinite_matrix_raises_value_error_like_pymatting_but_prints_nothing(capsys):
    """rembg falls back to the decontaminated cutout on pymatting's ValueError; ours raises
    UnsolvableTrimap (a ValueError), on which the service falls back the same way. Beyond
    pymatting's largest diagonal shift (1e5) this matrix stays indefinite."""
    indefinite = scipy.sparse.csc_matrix(-1e6 * np.eye(4))
    with pytest.raises(UnsolvableTrimap):
        incomplete_cholesky(indefinite)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError):
        ichol(indefinite)
    assert "PERFORMANCE WARNING" in capsys.readouterr().out


def test_a_shifted_factorisation_is_pymatting_ichols_too():
    """A matrix that needs a diagonal shift: both take the same shift."""
    matrix = scipy.sparse.csc_matrix(np.array([[1.0, 2.0], [2.0, 1.0]]))
    assert_same_factor(
        incomplete_cholesky(matrix, discard_threshold=0.0), pymatting_factor(matrix, 0.0)
    )


@BOTH_SOLVES
def test_solves_at_once_on_many_threads_give_the_lone_solves_result(direct_max_bytes):
    """Four solves share one helper thread: those that find it busy run both halves
    themselves, with the same arithmetic, so every result is the same to the bit."""
    matrix, rhs, _ = band(3, (64, 96))
    guess = np.full(matrix.shape[0], 0.5)
    alone = solve_band(matrix, rhs, guess, direct_max_bytes)
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda _: solve_band(matrix, rhs, guess, direct_max_bytes), range(8))
        )
    for result in results:
        np.testing.assert_array_equal(result, alone)


@BOTH_SOLVES
@pytest.mark.parametrize("unknown_pixels", [[(2, 2)], [(2, 2), (2, 3)], [(1, 1), (3, 3)]])
def test_bands_of_one_or_two_pixels_are_solved_exactly(unknown_pixels, direct_max_bytes):
    """Degenerate splits: the separator alone, or a half with no separator."""
    rng = np.random.default_rng(7)
    image = rng.random((5, 5, 3))
    trimap = np.zeros((5, 5))
    trimap[:, 3:] = 1.0
    for y, x in unknown_pixels:
        trimap[y, x] = 0.5
    matrix, rhs, _ = band_system(image, trimap)
    exact = scipy.sparse.linalg.spsolve(matrix.tocsc(), rhs)
    np.testing.assert_allclose(
        solve_band(matrix, rhs, np.full(rhs.size, 0.5), direct_max_bytes),
        exact,
        rtol=1e-6,
        atol=1e-9,
    )


def test_a_factor_beyond_the_cap_raises_value_error_instead_of_growing_forever():
    """With the cap lowered below what the factor needs, growth stops at the cap."""
    matrix, _, split = split_system(0)
    halves = (split.first, split.second)
    with pytest.raises(ValueError, match="outgrew"):
        incomplete_cholesky(matrix.tocsc(), halves, first_fill=0, max_nonzeros=3 * matrix.shape[0])
    # the same system within pymatting's own cap: the factor grows as it needs and is made
    assert incomplete_cholesky(matrix.tocsc(), halves, first_fill=0).lower().nnz > 0


def test_a_half_that_breaks_down_stops_both_and_the_shifted_factor_is_pymatting_ichols():
    """The second half meets a non-positive pivot while the first is sound: the attempt is
    given up by both, and the retry with pymatting's shift gives pymatting's factor."""
    sound, _, _ = band(4)
    indefinite = scipy.sparse.csc_matrix(np.array([[1.0, 2.0], [2.0, 1.0]]))
    matrix = scipy.sparse.block_diag([sound, indefinite], format="csc")
    ours = incomplete_cholesky(matrix, (sound.shape[0], 2))
    assert_same_factor(ours, pymatting_factor(matrix))
    assert not np.array_equal(
        ours.lower().diagonal()[:5], incomplete_cholesky(sound.tocsc()).lower().diagonal()[:5]
    )
