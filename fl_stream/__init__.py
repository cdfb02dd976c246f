"""fl-stream: live monitoring of federated (Flower) and centralized training.

``fl_stream.monitor``      the reusable monitoring client: protocol, sender, run log
``fl_stream.flower``       the Flower integration: streaming strategy, run config
``fl_stream.pneumonia``    the pneumonia task: data, model, training loops, metrics
``fl_stream.centralized``  centralized training: trainer, early stopping
"""
