"""The ``pyro-vi`` command line: one module per command (demo, diagnose, vae, bench)."""

__all__: list[str] = []
