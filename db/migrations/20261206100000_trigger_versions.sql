-- Trigger versions, and the event version and trigger version of every attempt, so
-- GET /v1/triggers/{id}/results can show why an action ran (the firing's explain)
-- and against which edit of the trigger.
--
-- * triggers.version: 1 when created, bumped by the database itself on every change
--   the matcher reads (services/matcher/queries.py TRIGGERS_SQL): the triggers row's
--   user_id, name, chain_id, registry, enabled, enabled_at, cooldown_seconds; any
--   row of its trigger_conditions (inserted, deleted, or a read column changed); any
--   row of its trigger_actions (inserted, deleted, or id, trigger_id, action_type,
--   priority or config changed). Not by description, is_stateful or an action's
--   encrypted secrets, which the matcher does not read. Whoever makes the change
--   (the API or plain SQL), since triggers do it.
-- * At most once per transaction per trigger: a PATCH that rewrites the triggers row
--   and replaces five conditions (one DELETE and five INSERT statements) is one
--   version. The marker is triggers.version_xact, the (64-bit, never reused within a
--   cluster) id of the transaction that last bumped the row: a bump happens only
--   where it is not the current transaction's pg_current_xact_id(). A marker in the
--   row rather than a transaction-local setting: it costs nothing per trigger (a
--   setting listing the bumped triggers grows with each, and a setting per trigger
--   stays defined in the session), it is rolled back with a savepoint like the bump
--   itself, and concurrent transactions serialise on the row lock and bump once
--   each. A statement-level trigger alone would bump once per statement (six times
--   for that PATCH), so the changes of conditions and actions are statement-level
--   triggers (one UPDATE of triggers per statement, whatever the number of rows:
--   bulk SQL stays cheap) that go through the same marker. (Restored by pg_dump into
--   another cluster, a row keeps its old cluster's marker: the one transaction of the
--   new cluster whose id equals it would miss that trigger's bump; any later change
--   bumps again.)
--   The statement-level function is SECURITY DEFINER (pinned search_path): the bump
--   must happen whoever changed the rows, and it touches only the version of the
--   triggers whose conditions or actions the caller was allowed to change. A trigger
--   function cannot be called directly.
-- * A new trigger starts with version 1 and its own transaction as marker, so the
--   conditions and actions inserted with it (POST /v1/triggers) are version 1 too.
-- * action_results.event_version ({id}@{block_hash}, shared.events.event_key of the
--   job's event) and action_results.trigger_version (the explain's trigger_version):
--   written by the dispatcher with every attempt; NULL in rows written before.

-- migrate:up
ALTER TABLE triggers
    ADD COLUMN version INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN version_xact xid8;
ALTER TABLE triggers ALTER COLUMN version_xact SET DEFAULT pg_current_xact_id();

ALTER TABLE action_results
    ADD COLUMN event_version TEXT,
    ADD COLUMN trigger_version INTEGER;

-- The triggers row itself: BEFORE UPDATE, named to run after the other BEFORE UPDATE
-- triggers of the table (alphabetical order), so it sees enabled_at as set.
CREATE FUNCTION bump_trigger_version()
RETURNS TRIGGER AS $$
BEGIN
    IF OLD.version_xact IS DISTINCT FROM pg_current_xact_id() THEN
        NEW.version := OLD.version + 1;
        NEW.version_xact := pg_current_xact_id();
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER version_triggers_bump
    BEFORE UPDATE ON triggers
    FOR EACH ROW
    WHEN ((OLD.user_id, OLD.name, OLD.chain_id, OLD.registry, OLD.enabled, OLD.enabled_at,
           OLD.cooldown_seconds)
          IS DISTINCT FROM
          (NEW.user_id, NEW.name, NEW.chain_id, NEW.registry, NEW.enabled, NEW.enabled_at,
           NEW.cooldown_seconds))
    EXECUTE FUNCTION bump_trigger_version();

-- Conditions and actions: one statement-level trigger per operation (a trigger with
-- transition tables has one event), one function for both tables.
CREATE FUNCTION bump_versions_of_changed_triggers()
RETURNS TRIGGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    ids TEXT[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT trigger_id) INTO ids FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT trigger_id) INTO ids FROM old_rows;
    ELSIF TG_TABLE_NAME = 'trigger_conditions' THEN
        -- rows whose read columns changed, on either side (a moved row bumps both)
        SELECT array_agg(DISTINCT d.trigger_id) INTO ids FROM (
            (SELECT id, trigger_id, condition_type, field, operator, value, config FROM new_rows
             EXCEPT
             SELECT id, trigger_id, condition_type, field, operator, value, config FROM old_rows)
            UNION ALL
            (SELECT id, trigger_id, condition_type, field, operator, value, config FROM old_rows
             EXCEPT
             SELECT id, trigger_id, condition_type, field, operator, value, config FROM new_rows)
        ) d;
    ELSE
        SELECT array_agg(DISTINCT d.trigger_id) INTO ids FROM (
            (SELECT id, trigger_id, action_type, priority, config FROM new_rows
             EXCEPT
             SELECT id, trigger_id, action_type, priority, config FROM old_rows)
            UNION ALL
            (SELECT id, trigger_id, action_type, priority, config FROM old_rows
             EXCEPT
             SELECT id, trigger_id, action_type, priority, config FROM new_rows)
        ) d;
    END IF;
    IF ids IS NOT NULL THEN
        UPDATE triggers SET version = version + 1, version_xact = pg_current_xact_id()
        WHERE id = ANY (ids) AND version_xact IS DISTINCT FROM pg_current_xact_id();
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER trigger_conditions_version_insert
    AFTER INSERT ON trigger_conditions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION bump_versions_of_changed_triggers();
CREATE TRIGGER trigger_conditions_version_update
    AFTER UPDATE ON trigger_conditions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION bump_versions_of_changed_triggers();
CREATE TRIGGER trigger_conditions_version_delete
    AFTER DELETE ON trigger_conditions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION bump_versions_of_changed_triggers();

CREATE TRIGGER trigger_actions_version_insert
    AFTER INSERT ON trigger_actions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION bump_versions_of_changed_triggers();
CREATE TRIGGER trigger_actions_version_update
    AFTER UPDATE ON trigger_actions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION bump_versions_of_changed_triggers();
CREATE TRIGGER trigger_actions_version_delete
    AFTER DELETE ON trigger_actions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION bump_versions_of_changed_triggers();

-- migrate:down
DROP TRIGGER IF EXISTS trigger_actions_version_delete ON trigger_actions;
DROP TRIGGER IF EXISTS trigger_actions_version_update ON trigger_actions;
DROP TRIGGER IF EXISTS trigger_actions_version_insert ON trigger_actions;
DROP TRIGGER IF EXISTS trigger_conditions_version_delete ON trigger_conditions;
DROP TRIGGER IF EXISTS trigger_conditions_version_update ON trigger_conditions;
DROP TRIGGER IF EXISTS trigger_conditions_version_insert ON trigger_conditions;
DROP FUNCTION IF EXISTS bump_versions_of_changed_triggers();
DROP TRIGGER IF EXISTS version_triggers_bump ON triggers;
DROP FUNCTION IF EXISTS bump_trigger_version();

ALTER TABLE action_results
    DROP COLUMN IF EXISTS trigger_version,
    DROP COLUMN IF EXISTS event_version;

ALTER TABLE triggers
    DROP COLUMN IF EXISTS version_xact,
    DROP COLUMN IF EXISTS version;
