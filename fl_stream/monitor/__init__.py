"""The reusable monitoring client: the wire protocol, the sender and the local run log.

Needs only ``websockets``: importing it never imports torch or flwr, so any training script
(Flower or not) can stream through it.
"""
