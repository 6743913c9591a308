"""The pure decisions: no I/O, no clock, no randomness of their own; unit-tested with tables."""
