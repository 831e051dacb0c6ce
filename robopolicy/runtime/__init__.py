"""The real-time runtime: fixed-rate loop, observation assembly, inference worker, executor, safety (DESIGN.md)."""
