"""Synthetic worlds: small procedural image domains where a reward can be computed exactly on a CPU."""
