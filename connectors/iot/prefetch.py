"""Run a batch iterator one step ahead on a worker thread.

The MQTT connector decodes batch N+1 while the pipeline commits batch N: SQLite does most of a
commit without the GIL (one ``sqlite3_step`` per multi-row statement, the WAL writes at
COMMIT), so the decoding, which is pure Python, runs in that time instead of after it.

Only the consumer (the thread that commits) acknowledges, and it does so after each commit and
in order: the worker never touches the store or the acks. A batch decoded ahead that is never
committed (a crash, an error, the consumer stopping early) is simply never acknowledged, and
the broker delivers its messages again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)


def prefetch(items: Iterator[T], name: str, depth: int = 1) -> Iterator[T]:
    """Yield what ``items`` yields, produced on a worker thread up to ``depth`` items ahead.

    An exception raised by ``items`` is raised here, in the consumer. When the consumer stops
    (the generator is closed or garbage collected), the worker stops after its current item
    and ``items`` is closed on the worker thread; this returns only once the worker has ended.
    """
    out: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=depth)
    halt = threading.Event()

    def put(entry: tuple[int, object]) -> bool:
        while not halt.is_set():
            try:
                out.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((_ITEM, item)):
                    break
            else:
                put((_END, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put((_ERROR, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    try:
        while True:
            kind, value = out.get()
            if kind == _END:
                return
            if kind == _ERROR:
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        halt.set()
        while worker.is_alive():
            try:  # unblock a worker waiting to hand over an item nobody will take
                out.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
