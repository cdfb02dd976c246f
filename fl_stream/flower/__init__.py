"""The Flower integration: streaming for any strategy, a client mod, and the app's run config.

What a Flower app needs to be monitored (docs/add-to-your-app.md):

- :class:`StreamingStrategy`: wraps any strategy and streams every round through a sender;
- :func:`sys_metrics_mod`: a ClientApp mod adding wall time, throughput, memory and device;
- :func:`progress_mod` and :func:`current_reporter`: a ClientApp mod through which the
  training loop streams its live progress (epoch, batch, examples per second, running loss);
- :func:`aggregate_metrics`: metric aggregation that leaves a client's NaN out of the mean.

Importing it never imports torch. The app's own run config is :mod:`fl_stream.flower.config`
and its choice of strategy :mod:`fl_stream.flower.strategies`.
"""

from fl_stream.flower.aggregation import aggregate_metrics
from fl_stream.flower.mods import sys_metrics_mod
from fl_stream.flower.progress import current_reporter, progress_mod
from fl_stream.flower.streaming import EvaluateFn, StreamingStrategy

__all__ = [
    "EvaluateFn",
    "StreamingStrategy",
    "aggregate_metrics",
    "current_reporter",
    "progress_mod",
    "sys_metrics_mod",
]
