"""Sweep engine: launch, track and summarise multi-objective Ray Tune sweeps."""
