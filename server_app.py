"""fl-stream ServerApp: federated training of the pneumonia ResNet, streamed to the relay."""

from __future__ import annotations

from logging import INFO

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from torch.utils.data import DataLoader

from fl_stream.flower import EvaluateFn, StreamingStrategy
from fl_stream.flower.config import RunConfig
from fl_stream.flower.strategies import build_strategy
from fl_stream.monitor.sender import MetricsWebSocketSender
from fl_stream.pneumonia.data import load_splits
from fl_stream.pneumonia.model import build_model
from fl_stream.pneumonia.task import evaluate, pick_device
from fl_stream.settings import shareable

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config, then run the chosen strategy, streaming it to the relay."""
    config = RunConfig.from_run_config(context.run_config)  # fails before any training
    run_id = str(context.run_id)
    evaluate_fn = centralized_evaluation(config) if config.centralized_eval else None

    torch.manual_seed(config.seed)
    initial_arrays = ArrayRecord(build_model(config.model).state_dict())
    log_path = config.log_path(run_id)
    log(INFO, "Streaming run %s to %s (log: %s)", run_id, config.relay_url, log_path)

    with MetricsWebSocketSender(
        config.relay_url or None,
        run_id=run_id,
        token=config.relay_token,
        log_path=log_path,
    ) as sender:
        strategy = StreamingStrategy(
            build_strategy(config),
            sender,
            best_metric=config.best_metric,
            run_config=shareable(config),
        )
        strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=config.num_server_rounds,
            evaluate_fn=evaluate_fn,
        )


def centralized_evaluation(config: RunConfig) -> EvaluateFn:
    """Return an ``evaluate_fn`` that scores the global model on the held-out test split.

    The test split is loaded here, before training, so a bad ``data-path`` fails early.
    """
    test_set = load_splits(config.data_path, config.image_size, config.seed).test
    loader = DataLoader(test_set, batch_size=256)
    model = build_model(config.model)
    device = pick_device()

    def evaluate_global_model(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        return MetricRecord({**evaluate(model, loader, device)})

    return evaluate_global_model
