"""Residual-stream activations: cached once into verified Arrow shards, read back shuffled."""
