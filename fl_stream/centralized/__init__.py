"""Centralized (non-federated) training that streams every epoch, with early stopping."""
