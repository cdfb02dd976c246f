"""tabularexample: a Flower ClientApp that trains the numpy MLP on its partition."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_stream.flower import progress_mod, sys_metrics_mod
from tabularexample.task import Data, load_data
from tabularexample.task import evaluate as evaluate_weights
from tabularexample.task import train as train_weights

# Flower App, with fl-stream's mods: wall time, throughput, memory and device in each reply,
# and each call's live progress (task.train reports it) streamed to the relay
app = ClientApp(mods=[sys_metrics_mod, progress_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received MLP on the local data (FedProx sends its proximal-mu)."""
    weights = msg.content["arrays"].to_numpy_ndarrays()
    train_data, _ = _local_data(context)
    config = msg.content["config"]
    weights = train_weights(
        weights,
        train_data,
        epochs=context.run_config["local-epochs"],
        lr=context.run_config["learning-rate"],
        proximal_mu=config.get("proximal-mu", 0.0),
        seed=config["server-round"],
    )
    metrics = {**evaluate_weights(weights, train_data), "num-examples": len(train_data[1])}
    content = RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received MLP on the local validation data."""
    weights = msg.content["arrays"].to_numpy_ndarrays()
    _, val_data = _local_data(context)
    metrics = {**evaluate_weights(weights, val_data), "num-examples": len(val_data[1])}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _local_data(context: Context) -> tuple[Data, Data]:
    return load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
