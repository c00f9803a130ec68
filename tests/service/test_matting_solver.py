"""service.matting_solver: pymatting's incomplete Cholesky and CG, compiled for our arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from pymatting.preconditioner.ichol import ichol
from pymatting.solver.cg import cg

from service.matting_solver import incomplete_cholesky, solve_band
from service.matting_system import band_system


def band(seed: int, shape=(48, 64)):
    """A matting system from a random image and a trimap with a wavy unknown band."""
    rng = np.random.default_rng(seed)
    image = rng.random((*shape, 3))
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    edge = shape[0] / 2 + 6 * np.sin(x / 5.0 + seed)
    trimap = np.where(y < edge - 4, 1.0, np.where(y > edge + 4, 0.0, 0.5))
    return band_system(image, trimap)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("threshold", [1e-4, 1e-3])
def test_the_factor_is_pymatting_ichols_bit_for_bit(seed, threshold):
    matrix, _, _ = band(seed)
    ours = incomplete_cholesky(matrix.tocsc(), threshold)
    values, rows, starts = ichol(matrix.tocsc(), discard_threshold=threshold).Ltuple
    assert np.array_equal(ours.values, values)
    assert np.array_equal(ours.rows, rows) and ours.rows.dtype == np.int32
    assert np.array_equal(ours.starts, starts)


def test_a_factor_that_outgrows_its_first_room_is_the_same_factor():
    matrix, _, _ = band(1)
    roomy, cramped = incomplete_cholesky(matrix.tocsc()), incomplete_cholesky(matrix.tocsc(), first_fill=0)
    assert roomy.values.size > matrix.shape[0]  # so room for the diagonal alone was too little
    assert np.array_equal(roomy.values, cramped.values) and np.array_equal(roomy.rows, cramped.rows)


def test_applying_the_factor_equals_pymatting_and_inverts_l_lt():
    matrix, _, _ = band(5)
    ours = incomplete_cholesky(matrix.tocsc())
    theirs = ichol(matrix.tocsc())
    residual = np.random.default_rng(0).standard_normal(matrix.shape[0])
    np.testing.assert_array_equal(ours(residual), theirs(residual))
    lower = scipy.sparse.csc_matrix((ours.values, ours.rows, ours.starts), shape=matrix.shape)
    np.testing.assert_allclose(lower @ (lower.T @ ours(residual)), residual, rtol=1e-9, atol=1e-9)


def test_the_solution_is_pymatting_cgs():
    matrix, rhs, _ = band(2)
    guess = np.full(matrix.shape[0], 0.5)
    ours = solve_band(matrix, rhs, guess)
    theirs = cg(matrix, rhs, M=ichol(matrix.tocsc()), rtol=1e-10)
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.linalg.norm(matrix @ ours - rhs) <= 1e-7 * np.linalg.norm(rhs) * 1.0001


def test_an_indefinite_matrix_raises_value_error_like_pymatting_but_prints_nothing(capsys):
    """rembg falls back to the plain cutout on ValueError; ours must raise the same. Beyond
    pymatting's largest diagonal shift (1e5) this matrix stays indefinite."""
    indefinite = scipy.sparse.csc_matrix(-1e6 * np.eye(4))
    with pytest.raises(ValueError):
        incomplete_cholesky(indefinite)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError):
        ichol(indefinite)
    assert "PERFORMANCE WARNING" in capsys.readouterr().out


def test_a_shifted_factorisation_is_pymatting_ichols_too():
    """A matrix that needs a diagonal shift: both take the same shift."""
    matrix = scipy.sparse.csc_matrix(np.array([[1.0, 2.0], [2.0, 1.0]]))
    ours = incomplete_cholesky(matrix, 0.0)
    values, rows, starts = ichol(matrix, discard_threshold=0.0).Ltuple
    assert np.array_equal(ours.values, values) and np.array_equal(ours.rows, rows)
    assert np.array_equal(ours.starts, starts)
