"""fl-stream ClientApp: trains and evaluates the global ResNet on this node's data partition."""

from __future__ import annotations

import os
from typing import cast

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader, TensorDataset

from fl_stream.flower import current_reporter, progress_mod, sys_metrics_mod
from fl_stream.flower.config import RunConfig
from fl_stream.pneumonia.data import client_datasets
from fl_stream.pneumonia.model import build_model
from fl_stream.pneumonia.task import evaluate as evaluate_model
from fl_stream.pneumonia.task import pick_device, proximal_term, train_epoch

# The mods add each call's wall time, throughput, memory and device to the reply, and stream
# its live progress (epoch, batch, examples per second, running loss) to the relay.
app = ClientApp(mods=[sys_metrics_mod, progress_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on the local partition for ``local-epochs`` epochs."""
    config = RunConfig.from_run_config(context.run_config)
    _limit_threads()
    device = pick_device()
    model = _received_model(msg, config).to(device)
    train_set, _ = _local_data(context, config)
    train_config = msg.content.config_records["config"]
    server_round = cast(int, train_config["server-round"])
    shuffle = torch.Generator().manual_seed(config.seed + server_round)  # reproducible runs
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=shuffle)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=0.9)
    # FedProx sends its proximal-mu; other strategies send none.
    mu = cast(float, train_config.get("proximal-mu", 0.0))
    penalty = proximal_term(model, mu) if mu > 0 else None

    progress = current_reporter()
    for epoch in range(1, config.local_epochs + 1):
        progress.epoch_started(epoch, config.local_epochs)
        metrics = train_epoch(model, loader, optimizer, device, penalty, progress.batch_done)

    # The last epoch's metrics describe the model this client sends back.
    metrics["num-examples"] = len(train_set)
    return _reply(msg, metrics, ArrayRecord(model.state_dict()))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the local partition's held-out part."""
    config = RunConfig.from_run_config(context.run_config)
    _limit_threads()
    model = _received_model(msg, config)
    _, eval_set = _local_data(context, config)
    loader = DataLoader(eval_set, batch_size=max(config.batch_size, 128))
    progress = current_reporter()
    progress.epoch_started(1, 1)  # the throughput clock starts here, after the set-up
    metrics = evaluate_model(model, loader, pick_device(), progress.batch_done)
    metrics["num-examples"] = len(eval_set)
    return _reply(msg, metrics)


def _received_model(msg: Message, config: RunConfig) -> torch.nn.Module:
    model = build_model(config.model)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return model


def _limit_threads() -> None:
    """Use only the CPUs this client was given, so parallel clients do not oversubscribe.

    Ray sets ``OMP_NUM_THREADS`` in each simulation worker to the ``num_cpus`` the client
    was granted; a SuperNode outside Ray leaves it unset and torch keeps its default.
    """
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


def _local_data(context: Context, config: RunConfig) -> tuple[TensorDataset, TensorDataset]:
    return client_datasets(
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        data_path=config.data_path,
        image_size=config.image_size,
        seed=config.seed,
        partitioning=config.partitioning,
        alpha=config.dirichlet_alpha,
        max_examples=config.samples_per_client,
    )


def _reply(msg: Message, metrics: dict[str, float], arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord({**metrics})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)
