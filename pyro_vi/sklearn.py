"""scikit-learn estimator for the Bayesian Gaussian mixture (needs ``pip install 'pyro-vi[sklearn]'``).

The public import path of :mod:`pyro_vi.models.gmm.estimator`, where the estimator lives
beside the model it wraps; ``import pyro_vi`` does not import this module or scikit-learn.

Examples
--------
>>> from pyro_vi.sklearn import VariationalGaussianMixture
>>> VariationalGaussianMixture(3, covariance_type="diag").get_params()["n_components"]
3
"""

from pyro_vi.models.gmm.estimator import SklearnConvergenceWarning, VariationalGaussianMixture, from_sklearn

__all__ = ["SklearnConvergenceWarning", "VariationalGaussianMixture", "from_sklearn"]
