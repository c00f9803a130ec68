"""service.matting.direct: the band's system solved exactly, level block by level block."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

from service.matting import solver as matting_solver
from service.matting.cores import side_by_side
from service.matting.direct import NotPositiveDefinite, plan_direct, solve_direct
from service.matting.solver import band_levels, solve_band
from service.matting.system import band_system
from tests.service.test_matting_solver import band


def one_after_the_other(first, second):
    return first(), second()


def direct(matrix: scipy.sparse.csr_matrix, rhs: np.ndarray, side_by_side=side_by_side):
    """solve_direct's solution, and its plan."""
    plan = plan_direct(band_levels(matrix))
    return solve_direct(matrix, rhs, plan, side_by_side), plan


def exact(matrix: scipy.sparse.csr_matrix, rhs: np.ndarray) -> np.ndarray:
    return scipy.sparse.linalg.spsolve(matrix.tocsc(), rhs)


@pytest.mark.parametrize("seed,shape", [(0, (48, 64)), (1, (64, 96)), (2, (96, 40))])
def test_the_solution_is_the_exact_one(seed, shape):
    matrix, rhs, _ = band(seed, shape)
    ours, plan = direct(matrix, rhs)
    assert plan.first.size > 0 and plan.second.size > 0 and plan.separator >= 0
    np.testing.assert_allclose(ours, exact(matrix, rhs), rtol=0, atol=1e-9)
    assert np.linalg.norm(matrix @ ours - rhs) < 1e-10 * np.linalg.norm(rhs)


def test_a_thick_band_whose_couplings_run_in_many_stairs_is_solved_exactly():
    """Levels of ~80 unknowns: every coupling is cut into runs with their own first columns."""
    rng = np.random.default_rng(9)
    image = rng.random((80, 120, 3))
    y, x = np.mgrid[0:80, 0:120]
    edge = 40 + 10 * np.sin(x / 9.0)
    trimap = np.where(y < edge - 20, 1.0, np.where(y > edge + 20, 0.0, 0.5))
    matrix, rhs, _ = band_system(image, trimap)
    ours, plan = direct(matrix, rhs)
    assert np.median(np.diff(plan.offsets)) > 60
    np.testing.assert_allclose(ours, exact(matrix, rhs), rtol=0, atol=1e-9)


def test_the_matrix_numbered_by_level_is_block_tridiagonal_and_the_chains_cover_each_level_once():
    matrix, _, _ = band(3, (64, 96))
    level = band_levels(matrix)
    plan = plan_direct(level)
    numbered = matrix[plan.order][:, plan.order].tocoo()
    block = np.searchsorted(plan.offsets, np.arange(matrix.shape[0]), side="right") - 1
    assert np.abs(block[numbered.row] - block[numbered.col]).max() == 1
    assert np.array_equal(block, level[plan.order])  # block k is level k
    assert np.array_equal(np.diff(plan.first), np.ones(plan.first.size - 1))  # towards it
    assert np.array_equal(np.diff(plan.second), -np.ones(plan.second.size - 1))
    assert plan.first[-1] + 1 == plan.separator == plan.second[-1] - 1
    levels = np.sort(np.concatenate([plan.first, plan.second, [plan.separator]]))
    assert np.array_equal(levels, np.arange(plan.offsets.size - 1))
    sizes = np.diff(plan.offsets)
    assert plan.factor_bytes == int((sizes.astype(np.int64) ** 2).sum() * 8)


def test_the_chains_give_the_same_bits_side_by_side_or_one_after_the_other():
    matrix, rhs, _ = band(4, (64, 96))
    together, _ = direct(matrix, rhs)
    in_turn, _ = direct(matrix, rhs, one_after_the_other)
    np.testing.assert_array_equal(together, in_turn)


def test_pieces_of_the_band_an_empty_level_apart_are_solved_exactly():
    top, top_rhs, _ = band(0, (32, 64))
    bottom, bottom_rhs, _ = band(5, (40, 48))
    matrix = scipy.sparse.block_diag([top, bottom], format="csr")
    rhs = np.concatenate([top_rhs, bottom_rhs])
    ours, plan = direct(matrix, rhs)
    assert (np.diff(plan.offsets) == 0).any()  # the empty level between the pieces
    np.testing.assert_allclose(ours, exact(matrix, rhs), rtol=0, atol=1e-9)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_bands_of_one_to_three_levels_are_solved_exactly(levels):
    """No separator (one or two levels), or a separator with one level on each side."""
    rng = np.random.default_rng(levels)
    size = 3 * levels
    dense = np.zeros((size, size))
    for k in range(levels):  # a block tridiagonal SPD matrix: dominant diagonal
        here = slice(3 * k, 3 * k + 3)
        dense[here, here] = rng.random((3, 3))
        if k + 1 < levels:
            dense[3 * k + 3 : 3 * k + 6, here] = rng.random((3, 3))
    dense = dense + dense.T + 10 * np.eye(size)
    matrix = scipy.sparse.csr_matrix(dense)
    rhs = rng.random(size)
    ours, plan = direct(matrix, rhs)
    assert (plan.separator >= 0) == (levels == 3)
    np.testing.assert_allclose(ours, np.linalg.solve(dense, rhs), rtol=1e-12, atol=1e-12)


def test_an_indefinite_level_raises_not_positive_definite():
    sound, rhs, _ = band(1)
    indefinite = scipy.sparse.csr_matrix(np.array([[1.0, 2.0], [2.0, 1.0]]))
    matrix = scipy.sparse.block_diag([sound, indefinite], format="csr")
    with pytest.raises(NotPositiveDefinite):
        direct(matrix, np.concatenate([rhs, [1.0, 1.0]]))


def test_solve_band_falls_back_to_the_iterative_solve(monkeypatch):
    """Where rounding makes a block indefinite, pymatting's way (with its shifts) still goes."""
    matrix, rhs, _ = band(2)
    guess = np.full(rhs.size, 0.5)
    iterative = solve_band(matrix, rhs, guess, direct_max_bytes=0)

    def indefinite(*_):
        raise NotPositiveDefinite("a block is not positive definite")

    monkeypatch.setattr(matting_solver, "solve_direct", indefinite)
    np.testing.assert_array_equal(solve_band(matrix, rhs, guess), iterative)


def test_a_band_whose_factor_exceeds_the_budget_is_solved_iteratively(monkeypatch):
    matrix, rhs, _ = band(2)
    guess = np.full(rhs.size, 0.5)
    needed = plan_direct(band_levels(matrix)).factor_bytes
    calls = []
    monkeypatch.setattr(
        matting_solver,
        "solve_direct",
        lambda *arguments: calls.append(1) or solve_direct(*arguments),
    )
    solve_band(matrix, rhs, guess, direct_max_bytes=needed - 1)
    assert calls == []
    solve_band(matrix, rhs, guess, direct_max_bytes=needed)
    assert calls == [1]
