"""service.matting.cores: the helpers follow --cpu-workers, not the machine's core count."""

from __future__ import annotations

import threading

from service.matting import cores


def _where() -> str:
    return threading.current_thread().name


def test_one_core_runs_both_parts_on_the_callers_thread_two_use_a_helper():
    try:
        cores.use_cores(1)
        first, second = cores.side_by_side(_where, _where)
        assert first == second == threading.current_thread().name
        cores.use_cores(2)
        first, second = cores.side_by_side(_where, _where)
        assert first == threading.current_thread().name
        assert second.startswith("matting-half")
    finally:
        cores.use_cores(2)


def _scipy_openblas():
    import ctypes
    import glob
    import os

    import scipy

    libraries = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    (path,) = glob.glob(os.path.join(libraries, "libscipy_openblas*.so*"))
    return ctypes.CDLL(path)


def test_the_composition_roots_core_count_gives_blas_one_thread():
    """Matting's parallelism is the helpers'; BLAS's own threads beside them would oversubscribe."""
    blas = _scipy_openblas()
    blas.scipy_openblas_set_num_threads(2)
    assert blas.scipy_openblas_get_num_threads() == 2
    cores.use_cores(2)
    assert blas.scipy_openblas_get_num_threads() == 1
