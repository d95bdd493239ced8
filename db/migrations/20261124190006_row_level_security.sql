-- Row-level security: tenant isolation in the database (docs/security.md; the
-- schema draft's example policy on triggers, generalised). See db/README.md,
-- "Row-level security".
--
-- The API, as erc8004_api, sets the user it serves per transaction:
--     SET LOCAL app.current_user_id = '<users.id>'   (or set_config(..., true))
-- and then sees and changes only that user's triggers (with their conditions,
-- actions and state), action results and API keys. Without the setting (or with
-- it empty) it sees no rows at all: current_setting('app.current_user_id', true)
-- is then NULL or '', which current_app_user_id() turns into NULL, equal to nothing.
-- The matcher and the dispatcher serve every user: permissive policies USING (true)
-- on what they read and write. The schema owner (migrations, maintenance) is the
-- tables' owner and is not subject to these policies (RLS is not FORCEd).
--
-- users has NO row-level security: registration and login look users up by name
-- or e-mail before the API knows who the caller is. API keys are looked up by
-- their hash, also before that, through authenticate_api_key() below.

-- migrate:up

CREATE FUNCTION current_app_user_id()
RETURNS TEXT
LANGUAGE sql STABLE
AS $$ SELECT NULLIF(current_setting('app.current_user_id', true), '') $$;

ALTER TABLE triggers ENABLE ROW LEVEL SECURITY;
ALTER TABLE trigger_conditions ENABLE ROW LEVEL SECURITY;
ALTER TABLE trigger_actions ENABLE ROW LEVEL SECURITY;
ALTER TABLE trigger_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE action_results ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;

-- triggers
CREATE POLICY triggers_user_isolation ON triggers
    FOR ALL TO erc8004_api
    USING (user_id = current_app_user_id())
    WITH CHECK (user_id = current_app_user_id());
CREATE POLICY triggers_matcher_read ON triggers
    FOR SELECT TO erc8004_matcher USING (true);
CREATE POLICY triggers_dispatcher_read ON triggers
    FOR SELECT TO erc8004_dispatcher USING (true);

-- trigger_conditions: rows of the user's own triggers (the subquery on triggers is
-- itself filtered by triggers_user_isolation).
CREATE POLICY trigger_conditions_user_isolation ON trigger_conditions
    FOR ALL TO erc8004_api
    USING (EXISTS (SELECT 1 FROM triggers t
                   WHERE t.id = trigger_conditions.trigger_id
                     AND t.user_id = current_app_user_id()))
    WITH CHECK (EXISTS (SELECT 1 FROM triggers t
                        WHERE t.id = trigger_conditions.trigger_id
                          AND t.user_id = current_app_user_id()));
CREATE POLICY trigger_conditions_matcher_read ON trigger_conditions
    FOR SELECT TO erc8004_matcher USING (true);

-- trigger_actions
CREATE POLICY trigger_actions_user_isolation ON trigger_actions
    FOR ALL TO erc8004_api
    USING (EXISTS (SELECT 1 FROM triggers t
                   WHERE t.id = trigger_actions.trigger_id
                     AND t.user_id = current_app_user_id()))
    WITH CHECK (EXISTS (SELECT 1 FROM triggers t
                        WHERE t.id = trigger_actions.trigger_id
                          AND t.user_id = current_app_user_id()));
CREATE POLICY trigger_actions_matcher_read ON trigger_actions
    FOR SELECT TO erc8004_matcher USING (true);
CREATE POLICY trigger_actions_dispatcher_read ON trigger_actions
    FOR SELECT TO erc8004_dispatcher USING (true);

-- trigger_state: read-only for the API (GET /triggers/{id}/state), the matcher's to keep.
CREATE POLICY trigger_state_user_isolation ON trigger_state
    FOR SELECT TO erc8004_api
    USING (EXISTS (SELECT 1 FROM triggers t
                   WHERE t.id = trigger_state.trigger_id
                     AND t.user_id = current_app_user_id()));
CREATE POLICY trigger_state_matcher_all ON trigger_state
    FOR ALL TO erc8004_matcher USING (true) WITH CHECK (true);

-- action_results: scoped by its own user_id column (the trigger's owner, written
-- by the dispatcher), so results of deleted triggers stay visible to their owner.
CREATE POLICY action_results_user_isolation ON action_results
    FOR SELECT TO erc8004_api
    USING (user_id = current_app_user_id());
CREATE POLICY action_results_dispatcher_read ON action_results
    FOR SELECT TO erc8004_dispatcher USING (true);
CREATE POLICY action_results_dispatcher_insert ON action_results
    FOR INSERT TO erc8004_dispatcher WITH CHECK (true);

-- api_keys
CREATE POLICY api_keys_user_isolation ON api_keys
    FOR ALL TO erc8004_api
    USING (user_id = current_app_user_id())
    WITH CHECK (user_id = current_app_user_id());

-- authenticate_api_key(key_hash): how the API turns a presented key into a user
-- before any app.current_user_id is set (RLS hides every api_keys row until then).
-- Returns the key's id and user when the key exists, is not revoked and its user
-- is active, and records last_used_at; no row otherwise. SECURITY DEFINER (runs as
-- the owner, who is not subject to RLS) with a pinned search_path; EXECUTE is
-- granted to erc8004_api only.
CREATE FUNCTION authenticate_api_key(p_key_hash TEXT)
RETURNS TABLE (api_key_id TEXT, user_id TEXT)
LANGUAGE sql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    UPDATE api_keys k
    SET last_used_at = NOW()
    FROM users u
    WHERE k.key_hash = p_key_hash
      AND k.revoked_at IS NULL
      AND u.id = k.user_id
      AND u.is_active IS NOT FALSE
    RETURNING k.id, k.user_id
$$;

REVOKE EXECUTE ON FUNCTION authenticate_api_key(TEXT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authenticate_api_key(TEXT) TO erc8004_api;

-- migrate:down
DROP FUNCTION IF EXISTS authenticate_api_key(TEXT);

DROP POLICY IF EXISTS api_keys_user_isolation ON api_keys;
DROP POLICY IF EXISTS action_results_dispatcher_insert ON action_results;
DROP POLICY IF EXISTS action_results_dispatcher_read ON action_results;
DROP POLICY IF EXISTS action_results_user_isolation ON action_results;
DROP POLICY IF EXISTS trigger_state_matcher_all ON trigger_state;
DROP POLICY IF EXISTS trigger_state_user_isolation ON trigger_state;
DROP POLICY IF EXISTS trigger_actions_dispatcher_read ON trigger_actions;
DROP POLICY IF EXISTS trigger_actions_matcher_read ON trigger_actions;
DROP POLICY IF EXISTS trigger_actions_user_isolation ON trigger_actions;
DROP POLICY IF EXISTS trigger_conditions_matcher_read ON trigger_conditions;
DROP POLICY IF EXISTS trigger_conditions_user_isolation ON trigger_conditions;
DROP POLICY IF EXISTS triggers_dispatcher_read ON triggers;
DROP POLICY IF EXISTS triggers_matcher_read ON triggers;
DROP POLICY IF EXISTS triggers_user_isolation ON triggers;

ALTER TABLE api_keys DISABLE ROW LEVEL SECURITY;
ALTER TABLE action_results DISABLE ROW LEVEL SECURITY;
ALTER TABLE trigger_state DISABLE ROW LEVEL SECURITY;
ALTER TABLE trigger_actions DISABLE ROW LEVEL SECURITY;
ALTER TABLE trigger_conditions DISABLE ROW LEVEL SECURITY;
ALTER TABLE triggers DISABLE ROW LEVEL SECURITY;

DROP FUNCTION IF EXISTS current_app_user_id();
