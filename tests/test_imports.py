"""Importing the relay or the monitoring client never imports torch, flwr or their stack.

Each module is imported alone in a fresh interpreter (``sys.executable -c``), so what an earlier
import of the test session loaded cannot hide or fake anything. A spy on the import system
records, for the first import of each heavy package, the chain of project files that led to
it, so a failure names the import to move.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("torch", "flwr", "torchvision", "numpy", "sklearn")

LIGHT_MODULES = (
    "relay",
    "relay.server",
    "relay.hub",
    "relay.store",
    "relay.http",
    "relay.config",
    "relay.__main__",  # imported, not run: main() runs only as ``python -m relay``
    "fl_stream.monitor",
    "fl_stream.monitor.sender",
    "fl_stream.monitor.protocol",
    "fl_stream.monitor.control",
    "fl_stream.monitor.envelope",
    "fl_stream.monitor.progress",
    "fl_stream.monitor.runlog",
    "fl_stream.monitor.replay",
    "fl_stream.monitor.connection",
    "fl_stream.settings",
    "fl_stream.watch",
    "relay.alerts",
)

# Runs in the child: import argv[1]; print which heavy packages were imported, and from where.
PROBE = """
import importlib, json, sys, traceback
heavy, root = set(sys.argv[2].split(",")), sys.argv[3]
chains = {}

class Spy:
    @staticmethod
    def find_spec(name, path=None, target=None):
        top = name.partition(".")[0]
        if top in heavy and top not in chains:
            chains[top] = [
                f"{f.filename[len(root) + 1:]}:{f.lineno}: {f.line}"
                for f in traceback.extract_stack()
                if f.filename.startswith(root)
            ]
        return None  # only watching: the normal finders do the import

sys.meta_path.insert(0, Spy)
importlib.import_module(sys.argv[1])
loaded = sorted(heavy & {name.partition(".")[0] for name in sys.modules})
print(json.dumps({"loaded": loaded, "chains": chains}))
"""


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_import_pulls_in_no_heavy_package(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module, ",".join(HEAVY), str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    chains = "\n".join(
        f"{package}, imported through:\n    " + "\n    ".join(chain)
        for package, chain in report["chains"].items()
    )
    assert report["loaded"] == [], f"import {module} loaded {report['loaded']}\n{chains}"
