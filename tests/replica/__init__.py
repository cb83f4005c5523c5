"""Tests of the replica core: convergence, durability, crash recovery, corruption and bad input."""
