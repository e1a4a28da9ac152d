"""pyro_vi.sklearn: the public path of the estimator; scikit-learn stays an optional extra.

The estimator itself is tested in ``tests/models/gmm/test_estimator.py``. Here: ``import pyro_vi``
loads neither scikit-learn nor this module, and without scikit-learn the import fails with a
message naming the extra. Both run in a fresh interpreter, so nothing imported by other tests
can hide an import.
"""

from __future__ import annotations

import subprocess
import sys

import pyro_vi.sklearn
from pyro_vi.models.gmm import estimator


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_re_exports_the_estimator_module():
    assert set(pyro_vi.sklearn.__all__) == set(estimator.__all__)
    for name in pyro_vi.sklearn.__all__:
        assert getattr(pyro_vi.sklearn, name) is getattr(estimator, name)


def test_import_pyro_vi_loads_no_sklearn():
    out = _run("import sys, pyro_vi; print(sorted(m for m in sys.modules "
               "if m.split('.')[0] == 'sklearn' or m in ('pyro_vi.sklearn', 'pyro_vi.models.gmm.estimator')))")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_without_sklearn_the_import_error_names_the_extra():
    # sys.modules[name] = None makes `import name` raise ImportError, as if it were not installed
    out = _run("import sys; sys.modules['sklearn'] = None\n"
               "try:\n    import pyro_vi.sklearn\nexcept ImportError as e:\n    print('ImportError:', e)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ImportError: pyro_vi.sklearn needs scikit-learn" in out.stdout
    assert "pip install 'pyro-vi[sklearn]'" in out.stdout
