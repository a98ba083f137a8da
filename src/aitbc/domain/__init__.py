"""Pure domain rules: no I/O, no clocks, no randomness (all passed in)."""
