-- event_outbox is a queue: every event passes through it and is deleted once Kafka
-- has it, so after a burst its file is mostly empty pages. Autovacuum then
-- truncates the file, and to do so holds an ACCESS EXCLUSIVE lock on the table
-- (while it scans back from the end for empty pages, drops their buffers and
-- shortens the file). Ingest's inserts and the relay's reads queue behind it:
-- in `make bench` this ran during the latency phase that follows the 750,000-event
-- burst (docs/performance.md, "Issue 17, tenth session"). Without truncation the
-- empty pages stay in the file and are reused by the next rows; the file keeps
-- the size of the largest backlog it held (VACUUM FULL gives it back, with the
-- same lock, at a time of the operator's choosing).

-- migrate:up
ALTER TABLE event_outbox SET (vacuum_truncate = false);

-- migrate:down
ALTER TABLE event_outbox RESET (vacuum_truncate);
