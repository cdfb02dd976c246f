"""tabularexample: FedProx on a numpy MLP over generated tabular data, streamed to fl-stream."""
