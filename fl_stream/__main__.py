"""``python -m fl_stream``: the ``fl-stream`` command line."""

from fl_stream.cli import main

raise SystemExit(main())
