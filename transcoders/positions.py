"""Which positions of a token row have transcoder features: one policy for every step.

The first token of a row is an attention sink: its residual stream and MLP activations are
outsized and unlike any other position's. Transcoders are therefore neither trained nor
evaluated there, and the replacement model gives it no features: its MLP output is kept exactly
(as an error node), as circuit-tracer does with position 0. Harvest, training, evaluation,
labels, trace and patching all read ``FEATURE_START`` from here, so they agree.
"""

FEATURE_START = 1
"""Positions before this have no features: harvest and evaluation skip them, the replacement model
writes the true MLP output there."""
