"""``python -m relay`` / ``fl-stream-relay``: run the relay until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from relay.config import configure_logging, parse_args
from relay.server import RelayStartError, run_relay


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the relay; a start failure exits 1 with one line."""
    config = parse_args(argv)
    configure_logging(config.log_level)
    try:
        asyncio.run(run_relay(config))
    except RelayStartError as exc:
        sys.exit(f"fl-stream-relay: error: {exc}")
    except KeyboardInterrupt:  # Ctrl+C before the signal handlers were installed
        sys.exit(130)


if __name__ == "__main__":
    main()
