"""Benchmarks: commands that print figures. Speed targets live here, not in tests."""
