"""A small mutation-testing driver over a list of hand-written mutants (see TESTING.md)."""
