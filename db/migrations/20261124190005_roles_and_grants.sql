-- Database roles and least-privilege grants (docs/decisions.md "Database roles";
-- not in the first schema draft, see db/README.md).
--
-- Migrations run as the schema owner (locally the login erc8004). The services
-- connect with the same DATABASE_URL and narrow themselves with SET ROLE (the
-- `role` startup parameter, DATABASE_ROLE) to one of four NOLOGIN roles:
--   erc8004_ingest      writes events, event_ids, checkpoints, reorgs, the outbox
--   erc8004_matcher     reads triggers and events, keeps trigger_state/evaluations
--   erc8004_dispatcher  reads triggers/actions/events/MCP tokens, writes action_results
--   erc8004_api         users, api keys, triggers CRUD, reads history and stats
-- None of them owns a table (so row-level security applies to them), and none may
-- UPDATE, DELETE or TRUNCATE events. Maintenance (ensure_event_partitions,
-- drop_event_partitions_older_than, refresh_stats_views, cleanup_old_*) runs as
-- the owner.

-- migrate:up

-- Roles are cluster-wide: create them only when missing (another database of the
-- cluster may have created them, possibly concurrently), and make the migrating
-- owner a member so it (and the services logging in as it) may SET ROLE to each.
DO $migration$
DECLARE
    role_name TEXT;
BEGIN
    FOREACH role_name IN ARRAY
        ARRAY['erc8004_ingest', 'erc8004_matcher', 'erc8004_dispatcher', 'erc8004_api']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created meanwhile by a concurrent migration
            END;
        END IF;
        IF NOT pg_has_role(current_user, role_name, 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO CURRENT_USER', role_name);
            EXCEPTION WHEN unique_violation THEN
                NULL; -- granted meanwhile by a concurrent migration
            END;
        END IF;
    END LOOP;
END
$migration$;

-- ingest: idempotent insert of events, checkpoints, reorgs, the outbox and its
-- relay. UPDATE on event_outbox only because SELECT ... FOR UPDATE SKIP LOCKED
-- (the relay's claim of rows) requires the UPDATE privilege.
GRANT SELECT, INSERT ON events, event_ids, reorgs TO erc8004_ingest;
-- DELETE on event_ids: a reorg releases the ids of replaced blocks (events stay).
GRANT DELETE ON event_ids TO erc8004_ingest;
GRANT SELECT, INSERT, UPDATE ON checkpoints TO erc8004_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON event_outbox TO erc8004_ingest;
GRANT USAGE ON SEQUENCE event_outbox_seq_seq TO erc8004_ingest;

-- matcher: reads triggers and events, keeps state and its idempotency record.
GRANT SELECT ON triggers, trigger_conditions, trigger_actions, events, event_ids, reorgs
    TO erc8004_matcher;
GRANT SELECT, INSERT, UPDATE, DELETE ON trigger_state, trigger_evaluations TO erc8004_matcher;

-- dispatcher: reads what it needs to run an action, records the outcome.
GRANT SELECT ON triggers, trigger_actions, events, agent_mcp_tokens TO erc8004_dispatcher;
GRANT SELECT, INSERT ON action_results TO erc8004_dispatcher;

-- api: accounts, keys, triggers CRUD, MCP tokens; read-only history and stats.
GRANT SELECT, INSERT, UPDATE, DELETE
    ON users, api_keys, triggers, trigger_conditions, trigger_actions, agent_mcp_tokens
    TO erc8004_api;
GRANT SELECT
    ON trigger_state, action_results, events, event_ids, events_hourly,
       action_metrics_hourly, checkpoints
    TO erc8004_api;
GRANT USAGE ON SEQUENCE trigger_conditions_id_seq, trigger_actions_id_seq TO erc8004_api;

-- migrate:down
-- The roles themselves (and the owner's membership in them) are left in place:
-- they are cluster-wide, other databases of the cluster (the tests' databases, a
-- second environment) may use them, and DROP ROLE fails while any database still
-- holds privileges or policies naming them. Only this database's grants are undone.
REVOKE USAGE ON SEQUENCE trigger_conditions_id_seq, trigger_actions_id_seq FROM erc8004_api;
REVOKE SELECT
    ON trigger_state, action_results, events, event_ids, events_hourly,
       action_metrics_hourly, checkpoints
    FROM erc8004_api;
REVOKE SELECT, INSERT, UPDATE, DELETE
    ON users, api_keys, triggers, trigger_conditions, trigger_actions, agent_mcp_tokens
    FROM erc8004_api;

REVOKE SELECT, INSERT ON action_results FROM erc8004_dispatcher;
REVOKE SELECT ON triggers, trigger_actions, events, agent_mcp_tokens FROM erc8004_dispatcher;

REVOKE SELECT, INSERT, UPDATE, DELETE ON trigger_state, trigger_evaluations FROM erc8004_matcher;
REVOKE SELECT ON triggers, trigger_conditions, trigger_actions, events, event_ids, reorgs
    FROM erc8004_matcher;

REVOKE USAGE ON SEQUENCE event_outbox_seq_seq FROM erc8004_ingest;
REVOKE SELECT, INSERT, UPDATE, DELETE ON event_outbox FROM erc8004_ingest;
REVOKE SELECT, INSERT, UPDATE ON checkpoints FROM erc8004_ingest;
REVOKE DELETE ON event_ids FROM erc8004_ingest;
REVOKE SELECT, INSERT ON events, event_ids, reorgs FROM erc8004_ingest;
