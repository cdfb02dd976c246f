"""``fl-stream watch``: follow a run from the terminal, for a shell without a browser.

The watcher subscribes to one run on the relay (the newest, unless named) and shows it until
it ends: the mode and status, a progress bar of rounds or epochs with the time left, the
latest aggregated metrics, each client's progress during a round, and banners for early
stopping and errors; a live view (rich) on a terminal, plain lines when piped. It imports
websockets and rich only, never torch or flwr.

Modules, one job each:

- :mod:`~fl_stream.watch.state`: what the run looks like from its messages (no I/O);
- :mod:`~fl_stream.watch.render`: how a state reads: the live view and the plain lines;
- :mod:`~fl_stream.watch.display`: the live terminal display and the plain one;
- :mod:`~fl_stream.watch.link`: the relay: the run list over HTTP, the subscriber connection;
- :mod:`~fl_stream.watch.follow`: subscribe, replay, live, reconnect, until the run ends;
- :mod:`~fl_stream.watch.command`: the command line and :func:`watch`.
"""

from .command import add_watch_command, build_parser, main, watch

__all__ = ["add_watch_command", "build_parser", "main", "watch"]
