"""Held-out evaluation of a saved model: loss, bits per token, bits per byte."""
