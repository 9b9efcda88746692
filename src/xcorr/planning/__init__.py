"""The planning engine: the one place that chooses a method, for every family of problems."""
