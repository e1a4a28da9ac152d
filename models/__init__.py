"""Model/guide pairs (installed as ``pyro_vi.models``): GMM, VAE and other conjugate models."""
