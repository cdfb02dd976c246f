"""The fl-stream relay: validates, numbers, stores (SQLite) and fans out training metrics.

Run it with ``python -m relay`` or ``fl-stream-relay``; see ``docs/relay.md``.
"""

from relay.server import run_relay

__all__ = ["run_relay"]
