"""Evaluation: metrics of generated images against users' histories and next items."""
