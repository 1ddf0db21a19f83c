"""drbd-sim: a userspace DRBD peer speaking the 8.4 dialect, for tests, benchmarks and demos."""
