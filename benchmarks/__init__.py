"""The benchmark scripts, a package run from the source checkout as ``python -m benchmarks.<name>``.

Each script is an argparse program with ``main(argv)``; ``pyro-vi bench NAME`` runs the same
``main``. Shared helpers live in :mod:`benchmarks._common`. Not installed with pyro-vi.
"""
