"""The raw dispatch loop (bench-dispatcher's baseline) commits, per partition, the
offsets below the first one consumed and not yet recorded: at least once, as the
dispatcher, however the POSTs finish out of order."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from tools.raw_dispatch import Offsets

pytestmark = pytest.mark.unit

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def test_a_gap_holds_the_commit_back_until_it_is_recorded() -> None:
    offsets = Offsets()
    for o in (10, 11, 12):
        offsets.consumed(A, o)
    offsets.consumed(B, 5)
    offsets.recorded(A, 11)
    offsets.recorded(A, 12)
    assert offsets.committable() == {}  # 10 not recorded yet
    offsets.recorded(B, 5)
    assert offsets.committable() == {B: 6}
    offsets.recorded(A, 10)
    assert offsets.committable() == {A: 13}
    assert offsets.committable() == {}  # nothing new since


def test_a_partition_commits_up_to_its_first_unrecorded_offset() -> None:
    offsets = Offsets()
    for o in range(5):
        offsets.consumed(A, o)
    for o in (0, 1, 3):
        offsets.recorded(A, o)
    assert offsets.committable() == {A: 2}
    offsets.recorded(A, 2)
    assert offsets.committable() == {A: 4}
