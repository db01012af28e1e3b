"""Run a function in a child process (or a thread) and relay its events to the caller.

Three parts of the studio do this: a training job (`fmnist.jobs`), the Keras worker of the web
server (`fmnist.keras_process`) and the backend measurement of the Compare page (`fmnist.measure`).

    child = Child(target, args, name="fmnist-x")   # target(link, *args) runs in a spawned process
    child.send(request)                            # the child reads it with link.receive()
    event = child.next_event(timeout=5.0)          # a dict the child sent with link.emit(...)
    child.close(grace_s=10)                        # wait for the end, kill after the grace

The events travel over a duplex pipe whose child end the parent closes after the start: when the
child dies (SIGKILL, a crash in TensorFlow) the parent reads `ChildEnded` at once instead of
waiting on a queue. A target that raises sends `{"kind": "failed", "message": ...}`; the last thing
every child sends is the end marker, which the parent consumes (it is never returned as an event).
`in_thread=True` runs the same target in a thread of this process (quicker start, for tests); a
thread cannot be killed.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
import types
from contextlib import contextmanager
from typing import Any, Callable, Iterator

END = "child-end"  # the kind of the marker a child sends last


class ChildEnded(RuntimeError):
    """The child ended (or its pipe broke) before sending what the caller waited for."""

    def __init__(self, exitcode: int | None):
        super().__init__(f"exit code {exitcode}")
        self.exitcode = exitcode


class Link:
    """The child's side: emit events, read requests, see a stop request."""

    def __init__(self, conn, stop):
        self._conn = conn
        self._send_lock = threading.Lock()  # several threads of the child may emit
        self.stop = stop  # an Event the parent sets with Child.request_stop()

    def emit(self, event: dict) -> None:
        """Send one event (a picklable dict) to the parent."""
        with self._send_lock:
            self._conn.send(event)

    def receive(self) -> Any:
        """The next object the parent sent; None when the parent has gone."""
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            return None


def _child_main(target: Callable, args: tuple, conn, stop) -> None:
    link = Link(conn, stop)
    try:
        target(link, *args)
    except BaseException as exc:  # reported to the parent as one event, never lost in a traceback
        try:
            link.emit({"kind": "failed", "run_dir": None, "message": f"{type(exc).__name__}: {exc}"})
        except (OSError, ValueError):
            pass
    finally:
        try:
            link.emit({"kind": END})
        except (OSError, ValueError):
            pass
        conn.close()


_MAIN_LOCK = threading.Lock()


@contextmanager
def plain_main() -> Iterator[None]:
    """Start a spawned child with a bare `__main__`.

    "spawn" re-runs the parent's `__main__` file in the child. Inside `streamlit run` that is the
    app script itself (Streamlit installs each script run as `__main__`), so every child ran
    streamlit_app.py without a server: the terminal filled with "to view a Streamlit app on a
    browser...", "Session state does not function..." and "missing ScriptRunContext" warnings, and
    the child paid for the app's imports. No child needs anything from `__main__`.
    """
    with _MAIN_LOCK:
        saved = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if saved is not None:
                sys.modules["__main__"] = saved


class Child:
    """`target(link, *args)` running in a spawned process (or a thread), started on creation."""

    def __init__(self, target: Callable, args: tuple = (), *, name: str, in_thread: bool = False,
                 stop_requested: bool = False):
        self.name = name
        self.ended = False  # the end marker has arrived (or the pipe broke)
        self.killed = False
        if in_thread:
            self._conn, child_conn = mp.Pipe()
            self.stop = threading.Event()
            self._proc = None
            self._thread = threading.Thread(target=_child_main, args=(target, args, child_conn, self.stop),
                                            name=name, daemon=True)
        else:
            ctx = mp.get_context("spawn")
            self._conn, child_conn = ctx.Pipe()
            self.stop = ctx.Event()
            self._thread = None
            self._proc = ctx.Process(target=_child_main, args=(target, args, child_conn, self.stop), name=name,
                                     daemon=True)
        if stop_requested:
            self.stop.set()
        if self._proc is not None:
            with plain_main():
                self._proc.start()
            child_conn.close()  # the child holds the only write end left: its death reads as EOF here
        else:
            self._thread.start()

    @property
    def pid(self) -> int | None:
        """The child process's id while it runs (None for a thread, or once it ended)."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def is_alive(self) -> bool:
        return self._proc.is_alive() if self._proc is not None else self._thread.is_alive()

    def request_stop(self) -> None:
        """Set the stop event the child sees as `link.stop`."""
        self.stop.set()

    def send(self, obj: Any) -> None:
        """Hand the child an object (`link.receive()`); ChildEnded when it has gone."""
        try:
            self._conn.send(obj)
        except (OSError, ValueError) as exc:  # a broken pipe is an OSError
            raise ChildEnded(self.exitcode) from exc

    def _read(self) -> dict | None:
        try:
            event = self._conn.recv()
        except (EOFError, OSError) as exc:
            self.ended = True
            raise ChildEnded(self.exitcode) from exc
        if isinstance(event, dict) and event.get("kind") == END:
            self.ended = True
            return None
        return event

    def next_event(self, timeout: float | None = None) -> dict | None:
        """The next event, waiting up to `timeout` seconds (None: as long as the child lives); None
        when none came in time. ChildEnded when the child ended first."""
        if self.ended:
            raise ChildEnded(self.exitcode)
        try:
            ready = self._conn.poll(timeout)
        except (EOFError, OSError) as exc:
            self.ended = True
            raise ChildEnded(self.exitcode) from exc
        if not ready:
            return None
        event = self._read()
        if event is None:
            raise ChildEnded(self.exitcode)
        return event

    def drain(self, limit: int = 2000) -> list[dict]:
        """The events waiting now (at most `limit`), without blocking; sets `ended` at the end."""
        events: list[dict] = []
        while not self.ended and len(events) < limit:
            try:
                if not self._conn.poll(0):
                    break
                event = self._read()
            except ChildEnded:
                break
            if event is not None:
                events.append(event)
        return events

    def kill(self) -> bool:
        """End the child process now (SIGKILL). False for a thread, which cannot be killed."""
        if self._proc is None:
            return False
        self.killed = True
        self._proc.kill()
        return True

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode if self._proc is not None else (None if self._thread.is_alive() else 0)

    def close(self, grace_s: float = 10.0) -> int | None:
        """Wait up to `grace_s` for the child to end, kill it if it has not, and close the pipe.
        Returns its exit code (0 for a thread)."""
        if self._proc is not None:
            if grace_s:
                self._proc.join(timeout=grace_s)
            if self._proc.is_alive():
                self.kill()
            self._proc.join(timeout=5)
        elif grace_s:
            self._thread.join(timeout=grace_s)
        self._conn.close()
        return self.exitcode
