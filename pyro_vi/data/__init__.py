"""Data at hand: the bundled Old Faithful and eight-schools data, image data sets (digits, MNIST) and the IDX reader."""

from pyro_vi.data.bundled import load_eight_schools, load_old_faithful
from pyro_vi.data.images import ImageData, Minibatches, load_digits, load_mnist

__all__ = ["ImageData", "Minibatches", "load_digits", "load_eight_schools", "load_mnist", "load_old_faithful"]
