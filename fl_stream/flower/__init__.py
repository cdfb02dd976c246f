"""The Flower integration: a strategy that streams every round, and the app's run config."""
