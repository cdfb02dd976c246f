"""tabularexample: a Flower ServerApp running FedProx, streamed live to the fl-stream relay."""

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedProx

from fl_stream.flower import StreamingStrategy
from fl_stream.monitor.sender import MetricsWebSocketSender
from tabularexample.task import init_weights

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedProx for ``num-server-rounds`` rounds, streaming every round to the relay."""
    strategy = FedProx(proximal_mu=context.run_config["proximal-mu"])

    # fl-stream: a sender to the relay, and the strategy wrapped so that it streams
    relay_url = context.run_config["relay-url"]
    with MetricsWebSocketSender(relay_url, run_id=str(context.run_id)) as sender:
        streaming = StreamingStrategy(
            strategy, sender, best_metric="balanced_accuracy", run_config=context.run_config
        )
        streaming.start(
            grid=grid,
            initial_arrays=ArrayRecord(init_weights()),
            num_rounds=context.run_config["num-server-rounds"],
        )
