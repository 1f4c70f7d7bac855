"""Scaling-law fitting for looped (Parcae) language models: laws, robust fits, isoFLOP
analysis, test-time laws, frontiers and figures. Every function works on plain DataFrames."""

from parcae_scaling.scaling.data import RUN_COLUMNS, TEST_TIME_COLUMNS, load_csv, validate_table
from parcae_scaling.scaling.effective_params import (
    ColumnParams, EffectiveParams, TableParams, UnrolledParams, CallableParams, get_effective_params,
)
from parcae_scaling.scaling.fit import fit_law
from parcae_scaling.scaling.laws import LAWS, Law, Term, get_law
from parcae_scaling.scaling.results import ConfidenceInterval, DataSelection, FitResult

__all__ = [
    "RUN_COLUMNS", "TEST_TIME_COLUMNS", "load_csv", "validate_table",
    "ColumnParams", "EffectiveParams", "TableParams", "UnrolledParams", "CallableParams",
    "get_effective_params", "fit_law", "LAWS", "Law", "Term", "get_law",
    "ConfidenceInterval", "DataSelection", "FitResult",
]
