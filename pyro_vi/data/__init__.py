"""Data at hand: the bundled Old Faithful data, image data sets (digits, MNIST) and the IDX reader."""

from pyro_vi.data.bundled import load_old_faithful
from pyro_vi.data.images import ImageData, Minibatches, load_digits, load_mnist

__all__ = ["ImageData", "Minibatches", "load_digits", "load_mnist", "load_old_faithful"]
