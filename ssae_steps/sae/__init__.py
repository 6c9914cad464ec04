"""Sparse autoencoders: the model, its training recipe, run names and the training report."""
