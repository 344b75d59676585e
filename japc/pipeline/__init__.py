"""Datalists, importers, training, evaluation, inference and reports."""
