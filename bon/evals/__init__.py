"""Evaluations of bon's outputs and scorers."""
