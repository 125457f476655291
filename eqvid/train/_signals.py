"""Stop a training run cleanly on SIGTERM / SIGINT (pre-emption, Ctrl-C)."""

import signal
import threading


class GracefulStop:
    """A context manager that turns the first SIGTERM or SIGINT into a request to
    stop after the step in flight (the loop then saves a checkpoint and returns);
    a second signal abandons the run at once (`KeyboardInterrupt`, nothing saved
    beyond the last committed checkpoint). Handlers are installed only in the main
    thread and restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: abandoning the run")
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
