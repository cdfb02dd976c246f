"""The pneumonia task: chest X-ray data sets and partitions, the ResNet, training loops, metrics."""
