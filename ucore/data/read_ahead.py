"""Read ahead: an iterator's next items are produced on a thread while the caller works.

The correlation driver reads token rows (tensorstore, host checks) for step k+1 while the
device runs step k. Items come out in the iterator's order; an exception on the thread is
raised in the caller at the item where it happened. Closing the generator (or leaving the
loop) stops the thread at its next item.
"""
from __future__ import annotations

import queue
import threading

_DONE = object()


def read_ahead(iterable, depth: int = 2):
  """Yields the items of `iterable`, produced up to `depth` items ahead on a thread."""
  q = queue.Queue(maxsize=max(int(depth), 1))
  stop = threading.Event()

  def produce():
    try:
      for item in iterable:
        while not stop.is_set():
          try:
            q.put((item, None), timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put((_DONE, None))
    except BaseException as e:   # handed to the consumer, raised there
      q.put((_DONE, e))

  t = threading.Thread(target=produce, daemon=True, name="read-ahead")
  t.start()
  try:
    while True:
      item, err = q.get()
      if item is _DONE:
        if err is not None:
          raise err
        return
      yield item
  finally:
    stop.set()
