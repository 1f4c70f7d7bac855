"""parcae-scaling: FLOP-matched sweeps, scaling-law fits and figures for looped LMs."""

__version__ = "0.1.0"
