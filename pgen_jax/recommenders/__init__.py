"""Retrieval recommenders, the paper's baselines: trained on the training windows, each returns a ranked
list of catalog items (item indices of the prepared store) per history, the history's items excluded."""
