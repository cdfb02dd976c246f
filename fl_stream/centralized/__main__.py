"""``python -m fl_stream.centralized``: the same as ``fl-stream train-centralized``."""

import sys

from fl_stream.cli import main

raise SystemExit(main(["train-centralized", *sys.argv[1:]]))
