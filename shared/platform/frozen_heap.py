"""What a service takes out of the cyclic GC's sight (``gc.freeze``), counted as it
is frozen rather than when somebody asks.

CPython counts its frozen objects by walking their whole list
(``gc.get_freeze_count``: about 10 ns an object). At a million triggers the
matcher's frozen index is 8.4 million objects after its load, more as programs are
compiled, so a gauge that asked at every scrape stalled the matcher's event loop
for about 0.1 s each time: a benchmark polling its counters every 20 ms cut it
from about 9,000 to 900 events/s (docs/performance.md, "Issue 17, eleventh
session"). Here each freeze
adds what it froze to a running total, and reading it costs nothing.

The total counts objects as they are frozen; a frozen object freed later (by its
reference count: an edited trigger's old program) is not taken off, so it is a
counter: what the freezes took out of the collector's sight since the start.
Freeze through this module only (``gc.freeze`` called elsewhere is not counted).
"""

from __future__ import annotations

import gc

_total = 0


def frozen_total() -> int:
    """Objects frozen through this module since the start (or the last
    :func:`unfreeze`), without walking them."""
    return _total


def freeze() -> int:
    """``gc.freeze()``, counted by walking the frozen list before and after. For a
    freeze that is rare and may be large: the start-up heap, an index after its
    first load made with the collector off (its objects are then in no particular
    generation). Returns what it froze."""
    global _total  # noqa: PLW0603 (the process's one count, as gc's own is)
    before = gc.get_freeze_count()
    gc.freeze()
    froze = gc.get_freeze_count() - before
    _total += froze
    return froze


def freeze_young() -> int:
    """``gc.freeze()`` counted by the generations it empties: costs the objects not
    yet frozen (few, after a collection between batches), not the millions frozen
    before. Returns what it froze."""
    global _total  # noqa: PLW0603
    # One call over every generation (none can collect in between), and no object
    # made between the count and the freeze: get_objects leaves out the list it
    # builds, and the list is freed by its reference count at once.
    froze = len(gc.get_objects())
    gc.freeze()
    _total += froze
    return froze


def unfreeze() -> None:
    """``gc.unfreeze()``, and the total back to 0 (tests start from, and leave, a
    process with nothing frozen)."""
    global _total  # noqa: PLW0603
    gc.unfreeze()
    _total = 0
