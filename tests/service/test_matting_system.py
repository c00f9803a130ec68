"""service.matting.system: the unknown pixels' rows of pymatting's matting Laplacian."""

from __future__ import annotations

import numpy as np
import pytest
from pymatting.laplacian.cf_laplacian import cf_laplacian

from service.matting.system import band_system


def pymatting_system(image: np.ndarray, trimap: np.ndarray):
    """The same system cut out of pymatting's whole-image Laplacian, as rembg's solve sees it."""
    known = (trimap == 0) | (trimap == 1)
    laplacian = cf_laplacian(image, is_known=known)
    laplacian.sum_duplicates()
    rows = laplacian[~known.ravel(), :]
    matrix = rows[:, ~known.ravel()]
    rhs = -rows[:, known.ravel()].dot((trimap.ravel()[known.ravel()] == 1).astype(np.float64))
    return matrix.tocsr(), rhs


def random_trimap(
    rng: np.random.Generator, shape: tuple[int, int], unknown_share: float
) -> np.ndarray:
    trimap = rng.choice([0.0, 1.0], size=shape)
    trimap[rng.random(shape) < unknown_share] = 0.5
    return trimap


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(23, 31), (5, 5), (3, 40)])
def test_rows_equal_pymatting_laplacian(seed, shape):
    """Unknown pixels everywhere, on every edge and corner included: the values are pymatting's."""
    rng = np.random.default_rng(seed)
    image = rng.random((*shape, 3))
    trimap = random_trimap(rng, shape, 0.4)
    trimap[0, 0] = trimap[-1, -1] = trimap[0, -1] = trimap[-1, 0] = 0.5
    matrix, rhs, unknown = band_system(image, trimap)
    expected_matrix, expected_rhs = pymatting_system(image, trimap)
    assert np.array_equal(unknown, np.flatnonzero(trimap == 0.5))
    assert matrix.has_canonical_format
    difference = matrix - expected_matrix
    assert abs(difference).max() <= 1e-12 * max(abs(expected_matrix).max(), 1.0)
    np.testing.assert_allclose(rhs, expected_rhs, rtol=1e-12, atol=1e-12)


def test_the_matrix_is_symmetric_and_its_rows_only_reach_unknown_neighbours():
    rng = np.random.default_rng(7)
    image = rng.random((40, 50, 3))
    trimap = np.zeros((40, 50))
    trimap[20:, :] = 1.0
    trimap[15:25, :] = 0.5  # a band across the whole image, touching both side edges
    matrix, _, unknown = band_system(image, trimap)
    assert abs(matrix - matrix.T).max() < 1e-12
    rows, columns = matrix.nonzero()
    y_i, x_i = np.divmod(unknown[rows], 50)
    y_j, x_j = np.divmod(unknown[columns], 50)
    assert max(np.abs(y_i - y_j).max(), np.abs(x_i - x_j).max()) <= 2


def test_no_unknown_pixels_gives_an_empty_system():
    matrix, rhs, unknown = band_system(np.zeros((6, 6, 3)), np.ones((6, 6)))
    assert matrix.shape == (0, 0) and rhs.size == 0 and unknown.size == 0
