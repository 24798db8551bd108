"""Builders for the `tiny` profile: random models written in the *real* on-disk formats."""
