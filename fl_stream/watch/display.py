"""The two displays: a rich live view for a terminal, plain lines for a pipe or a file."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.live import Live

from fl_stream.monitor.protocol import Message

from .render import StepBar, live_view, plain_line
from .state import RunState

__all__ = ["LiveDisplay", "PlainDisplay"]

# The live view is redrawn at most this often while messages pour in (a replay).
REDRAW_S = 0.2


class LiveDisplay:
    """The run drawn in place with :class:`rich.live.Live`; the last frame stays on screen."""

    def __init__(self, console: Console) -> None:
        self._bar = StepBar()
        # Redrawn by the watcher's own loop (no refresh thread reading a changing state);
        # nothing else writes to the terminal meanwhile, so stdout is left alone.
        self._live = Live(
            console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
        )
        self._state: RunState | None = None
        self._notice: str | None = None
        self._drawn_at = 0.0

    def __enter__(self) -> LiveDisplay:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._state is not None:
            self._draw(self._state)
        self._live.stop()

    def message(self, state: RunState, message: Message) -> None:
        """Redraw, unless the last draw was under :data:`REDRAW_S` ago."""
        self._state = state
        if time.monotonic() - self._drawn_at >= REDRAW_S:
            self._draw(state)

    def connecting(self, state: RunState, url: str) -> None:
        """Say so in the header (a relay that does not answer takes seconds to fail)."""
        self.notice(state, f"connecting to {url}")

    def notice(self, state: RunState, text: str | None) -> None:
        """Show the link's state in the header."""
        self._notice = text
        self._draw(state)

    def tick(self, state: RunState) -> None:
        """Redraw: ages and the time left move on."""
        self._draw(state)

    def _draw(self, state: RunState) -> None:
        self._state = state
        self._live.update(live_view(state, self._bar, self._notice, time.time()), refresh=True)
        self._drawn_at = time.monotonic()


class PlainDisplay:
    """One line per message worth a line, and one per change of the link's state."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._notice: str | None = None

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def message(self, state: RunState, message: Message) -> None:
        """Print the message's line, if it has one."""
        line = plain_line(state, message)
        if line is not None:
            self._print(line)

    def connecting(self, state: RunState, url: str) -> None:
        """Nothing: the first line says which run on which relay once connected, and a
        failure is one line on stderr."""

    def notice(self, state: RunState, text: str | None) -> None:
        """Print a new link state (nothing for "live")."""
        if text is not None and text != self._notice:
            self._print(text)
        self._notice = text

    def tick(self, state: RunState) -> None:
        """Nothing: plain lines do not move."""

    def _print(self, line: str) -> None:
        self._console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
