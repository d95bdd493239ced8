"""Recomputations (docs/semantics.md sections 5a and 6): a trigger's state rows
restored to before a record and its effective history evaluated again, in a
transaction, when events leave that history.

* A revocation (FeedbackRevoked) whose feedback some stateful trigger evaluated and
  let through its gate recomputes that trigger without the feedback, before the
  revocation itself is evaluated (in the stateful transaction, not again on
  redelivery).
* A retraction (a reorg) recomputes, in its own transaction, every stateful trigger
  of the chain that evaluated a replaced version, without those versions.

When the history cannot be replayed (e.g. more than MAX_REPLAY evaluations, or a
record of the release before), the removed events only leave the rate windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import structlog

from services.matcher import queries
from services.matcher.keeper import IndexKeeper
from services.matcher.metrics import MatcherMetrics, RecomputationCause
from shared.contract.event_rows import (
    event_from_row,
)
from shared.contract.events import (
    Event,
    version_key,
)
from shared.contract.jobs import AnyTopicMessage, EventMessage, RetractionMessage
from shared.engine.evaluate import State, TriggerSpec, passes_gate, retract
from shared.engine.replay import (
    EDIT,
    Evaluated,
    exclude,
    refold,
    restore,
    revokes,
    spec_at,
    tick_scope,
)
from shared.platform.db import Conn

log = structlog.get_logger(__name__)

REVOCATION = "FeedbackRevoked"
#: A recomputation replays at most this many evaluations of a trigger; beyond, the
#: removed events only leave the rate windows (a revocation of an old feedback of a
#: busy agent must not hold the chain's partition for long).
MAX_REPLAY = 20_000


class Recomputations:
    """Finds the revocations of a batch that change some trigger's state, and runs
    the recomputations of revocations and retractions."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        keeper: IndexKeeper,
        metrics: MatcherMetrics,
    ) -> None:
        self._pool = pool
        self._keeper = keeper
        self._metrics = metrics

    async def to_recompute(self, messages: Sequence[AnyTopicMessage]) -> dict[int, set[str]]:
        """The revocations of the batch that change some trigger's state: position ->
        the ids of those triggers. A trigger's state changes when it evaluated the
        revoked NewFeedback and that feedback passed its gate (an event that failed
        it changed no state); one query for the whole batch. A feedback earlier in
        the same batch (not recorded yet) counts as evaluated."""
        index = self._keeper.index
        found: dict[int, set[str]] = {}
        asks: list[tuple[int, str, Event]] = []
        triggers: dict[str, TriggerSpec] = {}
        for n, message in enumerate(messages):
            if not isinstance(message, EventMessage) or message.event.event_type != REVOCATION:
                continue
            event = message.event
            earlier: bool | None = None  # the named feedback is earlier in this batch
            for trigger in index.candidates(event):
                if not trigger.is_stateful or (
                    message.ingested_at is not None and message.ingested_at < trigger.enabled_at
                ):
                    continue
                triggers[trigger.id] = trigger
                if earlier is None:
                    earlier = any(
                        isinstance(m, EventMessage) and revokes(event, m.event)
                        for m in messages[:n]
                    )
                if earlier:
                    found.setdefault(n, set()).add(trigger.id)
                else:
                    asks.append((n, trigger.id, event))
        if asks:
            async with self._pool.acquire() as conn:
                hits = await queries.revocation_hits(conn, asks)
            for row in hits:
                trigger = triggers[row["trigger_id"]]
                if row["trigger_version"] == trigger.version and not passes_gate(
                    trigger, event_from_row(row)
                ):
                    continue  # it changed no state
                found.setdefault(row["n"], set()).add(trigger.id)
        return found

    async def revocation(
        self, conn: Conn, pairs: list[tuple[Event, TriggerSpec]], recompute: set[str]
    ) -> None:
        """One revocation: the states of the triggers it concerns recomputed without
        the feedback it revokes, before it is evaluated itself (not again on
        redelivery)."""
        done = await queries.done_evaluations(conn, [(t.id, version_key(e)) for e, t in pairs])
        event = pairs[0][0]
        todo = [t for e, t in pairs if t.id in recompute and (t.id, version_key(e)) not in done]
        starts = await queries.revoked_feedback_records(conn, [t.id for t in todo], event)
        for trigger in todo:
            if trigger.id in starts:
                await self._recompute(
                    conn, trigger, starts[trigger.id], revocation=event, why="revocation"
                )

    async def retract(self, message: RetractionMessage) -> None:
        """Recompute the state of every stateful trigger of the chain that evaluated a
        replaced version, without those versions (docs/semantics.md section 6)."""
        index = self._keeper.index
        triggers = {t.id: t for t in index.stateful_of_chain(message.chain_id)}
        recomputed = 0
        if triggers and message.event_keys:
            async with self._pool.acquire() as conn, conn.transaction():
                found = await queries.first_record_of(conn, list(triggers), message.event_keys)
                for trigger_id, hits in sorted(found.items()):
                    seqs = [seq for seq, _ in hits]
                    start = None if None in seqs else min(s for s in seqs if s is not None)
                    await self._recompute(
                        conn,
                        triggers[trigger_id],
                        start,
                        replaced=frozenset(message.event_keys),
                        why="reorg",
                    )
                    recomputed += 1
        self._metrics.retractions.inc()
        log.info(
            "retraction applied",
            reorg_id=message.reorg_id,
            chain_id=message.chain_id,
            from_block=message.from_block,
            to_block=message.to_block,
            replaced=len(message.event_keys),
            triggers_recomputed=recomputed,
        )

    async def _recompute(
        self,
        conn: Conn,
        trigger: TriggerSpec,
        start: int | None,
        *,
        why: RecomputationCause,
        replaced: frozenset[str] = frozenset(),
        revocation: Event | None = None,
    ) -> None:
        """Restore the trigger's state rows to before its record ``start`` and evaluate
        its effective history after it again (shared.engine.replay.restore and refold), in
        the caller's transaction; when that cannot be done, only withdraw the removed
        events from the rate windows."""
        current = await queries.lock_chain_states(conn, [trigger.id])
        rows = {key[1]: state for key, state in current.items()}
        result: dict[str, State] | str = "a record written by the release before"
        records: list[Evaluated] = []
        if start is not None:
            loaded = await queries.records_from(conn, trigger.id, start, MAX_REPLAY + 1)
            if len(loaded) > MAX_REPLAY:
                loaded = []
                result = f"more than {MAX_REPLAY} evaluations to replay"
            records = await self._evaluated(conn, trigger, loaded)
            # a replaced revocation un-revokes its feedback: start there when earlier
            for rec in records:
                if rec.key in replaced and rec.event and rec.event.event_type == REVOCATION:
                    more = await queries.revoked_feedback_records(
                        conn, [trigger.id], rec.event, revoked_too=True
                    )
                    earlier = more.get(trigger.id, start)
                    if earlier is None or earlier < start:
                        await self._recompute(
                            conn, trigger, earlier, why=why, replaced=replaced,
                            revocation=revocation,
                        )  # fmt: skip
                        return
            if records:
                result = exclude(records, replaced=replaced, revocation=revocation) or restore(
                    records, rows
                )
            if not isinstance(result, str):
                # the restored rows are as the first record found them, under its definition
                result = refold(
                    trigger, records, result, since=records[0].trigger, keep_before=True
                )
        if isinstance(result, str):
            log.warning(
                "recomputation not possible: rate windows withdrawn only",
                trigger_id=trigger.id,
                cause=why,
                reason=result,
            )
            # (a revocation withdraws its feedback when it is evaluated next: evaluate)
            new = self._withdrawn(trigger, rows, replaced)
            if replaced:  # out of the history all the same, for later recomputations
                await queries.mark_retracted(conn, trigger.id, sorted(replaced))
        else:
            new = result
            await queries.update_records(
                conn,
                trigger.id,
                [(r.key, r.before, r.excluded) for r in records if r.excluded != EDIT],
            )
        save = {(trigger.id, k): v for k, v in new.items() if v != rows.get(k)}
        await queries.save_states(conn, save)
        exact = not isinstance(result, str)
        self._metrics.recomputations.labels(why, "exact" if exact else "withdrawn").inc()
        log.info(
            "trigger state recomputed",
            trigger_id=trigger.id,
            cause=why,
            exact=exact,
            events=len(records),
            rows_changed=len(save),
        )

    @staticmethod
    def _withdrawn(
        trigger: TriggerSpec,
        rows: dict[str, State],
        replaced: frozenset[str],
    ) -> dict[str, State]:
        """The fallback: the replaced versions out of the rate windows only."""
        new = dict(rows)
        for key, state in rows.items():
            if replaced:
                out = retract(
                    trigger, state=state, chain_id=trigger.chain_id, from_block=0,
                    to_block=None, event_keys=replaced, scope_key=key,
                )  # fmt: skip
                new[key] = out.state
        return new

    async def _evaluated(
        self, conn: Conn, trigger: TriggerSpec, loaded: Sequence[asyncpg.Record]
    ) -> list[Evaluated]:
        """Records as the engine takes them: each with its event and the definition it
        was evaluated under (the trigger now for its current version), and an edit
        marker (shared.engine.replay.EDIT) for every stored version in between, so that a
        recomputation applies the edits as the matcher did."""
        known = [r["trigger_version"] for r in loaded if r["trigger_version"] is not None]
        if not known:
            return [self._record(r, {}) for r in loaded]
        low = min(known)
        stored = (
            await queries.definitions_from(conn, trigger.id, low) if low < trigger.version else {}
        )
        specs: dict[int, TriggerSpec | None] = {
            v: spec_at(trigger, v, d) for v, d in stored.items() if v != trigger.version
        }
        specs[trigger.version] = trigger
        versions = sorted(v for v, spec in specs.items() if spec is not None)
        out: list[Evaluated] = []
        last: int | None = None
        for r in loaded:
            version = r["trigger_version"]
            if version is not None and last is not None and version > last:
                out += [self._edit(v, specs) for v in versions if last < v < version]
            if version is not None:
                last = version
            out.append(self._record(r, specs))
        if last is not None:
            out += [self._edit(v, specs) for v in versions if last < v < trigger.version]
        return out

    @staticmethod
    def _record(r: asyncpg.Record, specs: dict[int, TriggerSpec | None]) -> Evaluated:
        version = r["trigger_version"]
        scope = tick_scope(r["event_id"])
        if scope is not None:
            return Evaluated(
                r["event_id"],
                None,
                specs.get(version) if version is not None else None,
                r["fired"],
                r["states_before"],
                tick=int(r["record_time"].timestamp()),
                scope=scope,
            )
        return Evaluated(
            r["event_id"],
            event_from_row(r) if r["stored"] else None,
            specs.get(version) if version is not None else None,
            r["fired"],
            r["states_before"],
            r["excluded"],
        )

    @staticmethod
    def _edit(version: int, specs: dict[int, TriggerSpec | None]) -> Evaluated:
        return Evaluated(f"edit#{version}", None, specs[version], excluded=EDIT)
