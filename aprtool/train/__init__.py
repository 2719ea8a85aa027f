"""Pretraining: configuration, the loop, crash-safe tiered checkpoints."""
