-- Core tables of the first schema draft: users, triggers, trigger_conditions,
-- trigger_actions, trigger_state, checkpoints, action_results, agent_mcp_tokens,
-- update_updated_at_column() and cleanup_old_action_results(); plus api_keys and
-- trigger_evaluations. Every change against the document is marked "DEVIATION"
-- and listed in db/README.md.

-- migrate:up

-- ---------------------------------------------------------------------------
-- update_updated_at_column(): as in the document.
CREATE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- ---------------------------------------------------------------------------
-- users: as in the document. Row-level security stays OFF on this table: the API
-- must find a user by username/email to register and log in before it knows
-- whose request it serves (see the row_level_security migration).
CREATE TABLE users (
    id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::TEXT,
    username TEXT UNIQUE NOT NULL,
    email TEXT UNIQUE NOT NULL,
    password_hash TEXT NOT NULL, -- argon2 or bcrypt hash, never the password
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    last_login_at TIMESTAMPTZ,
    is_active BOOLEAN DEFAULT true
);

CREATE INDEX idx_users_email ON users(email);
CREATE INDEX idx_users_username ON users(username);

CREATE TRIGGER update_users_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

-- ---------------------------------------------------------------------------
-- api_keys (DEVIATION: not in the document; users may authenticate with API keys,
-- stored hashed: README, "For users: the API", and docs/security.md). Only the
-- hash of the key is stored; `prefix` is the first characters of the key, shown to
-- the user to tell keys apart.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::TEXT,
    user_id TEXT NOT NULL,
    name TEXT,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    CONSTRAINT fk_user FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
);

CREATE INDEX idx_api_keys_user_id ON api_keys(user_id);

-- ---------------------------------------------------------------------------
-- triggers: as in the document, plus (DEVIATION) two columns:
--   cooldown_seconds: minimum seconds between two firings of the trigger (per
--     scope), NULL = no cooldown.
--   enabled_at: when the trigger was last enabled. The matcher fires a trigger
--     only on events ingested (events.created_at) after it, so re-enabling a
--     trigger does not replay what happened while it was off. Set on insert by
--     the default and by trigger set_trigger_enabled_at when enabled turns true.
CREATE TABLE triggers (
    id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::TEXT,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    chain_id INTEGER NOT NULL,
    registry TEXT NOT NULL CHECK (registry IN ('identity', 'reputation', 'validation')),
    enabled BOOLEAN DEFAULT true,
    is_stateful BOOLEAN DEFAULT false,
    cooldown_seconds INTEGER CHECK (cooldown_seconds >= 0),
    enabled_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    CONSTRAINT fk_user FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
);

CREATE INDEX idx_triggers_user_id ON triggers(user_id);
CREATE INDEX idx_triggers_chain_registry_enabled
    ON triggers(chain_id, registry, enabled)
    WHERE enabled = true;

CREATE TRIGGER update_triggers_updated_at
    BEFORE UPDATE ON triggers
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

CREATE FUNCTION set_trigger_enabled_at()
RETURNS TRIGGER AS $$
BEGIN
    NEW.enabled_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER set_triggers_enabled_at
    BEFORE UPDATE OF enabled ON triggers
    FOR EACH ROW
    WHEN (NEW.enabled IS TRUE AND OLD.enabled IS NOT TRUE)
    EXECUTE FUNCTION set_trigger_enabled_at();

-- ---------------------------------------------------------------------------
-- trigger_conditions: as in the document. Groups (any/all/not) are one row with
-- condition_type = 'group' and the nested conditions in config (docs/decisions.md).
CREATE TABLE trigger_conditions (
    id SERIAL PRIMARY KEY,
    trigger_id TEXT NOT NULL,
    condition_type TEXT NOT NULL,
    field TEXT NOT NULL,
    operator TEXT NOT NULL,
    value TEXT NOT NULL,
    config JSONB, -- Extra configuration (window_size, alpha, nested conditions, ...)
    created_at TIMESTAMPTZ DEFAULT NOW(),
    CONSTRAINT fk_trigger FOREIGN KEY (trigger_id) REFERENCES triggers(id) ON DELETE CASCADE
);

CREATE INDEX idx_trigger_conditions_trigger_id ON trigger_conditions(trigger_id);

-- ---------------------------------------------------------------------------
-- trigger_actions: as in the document, plus (DEVIATION) secret_ciphertext: the
-- webhook signing secret of a REST action, encrypted by the application with
-- SECRETS_KEY (never stored in plain text, never inside config).
CREATE TABLE trigger_actions (
    id SERIAL PRIMARY KEY,
    trigger_id TEXT NOT NULL,
    action_type TEXT NOT NULL CHECK (action_type IN ('telegram', 'rest', 'mcp')),
    priority INTEGER DEFAULT 1, -- Lower number = higher priority
    config JSONB NOT NULL,
    secret_ciphertext BYTEA,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    CONSTRAINT fk_trigger FOREIGN KEY (trigger_id) REFERENCES triggers(id) ON DELETE CASCADE
);

CREATE INDEX idx_trigger_actions_trigger_id ON trigger_actions(trigger_id);

-- ---------------------------------------------------------------------------
-- trigger_changed: every change to a trigger, its conditions or its actions sends
-- pg_notify('trigger_changed', <trigger id>) (docs/architecture.md, "The
-- matcher"), whoever makes it, so the matcher reloads its in-memory index.
-- TG_ARGV[0] names the column holding the trigger id. An UPDATE that moves a
-- condition/action to another trigger notifies both triggers.
CREATE FUNCTION notify_trigger_changed()
RETURNS TRIGGER AS $$
DECLARE
    old_id TEXT;
    new_id TEXT;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_id := to_jsonb(OLD) ->> TG_ARGV[0];
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_id := to_jsonb(NEW) ->> TG_ARGV[0];
    END IF;
    IF new_id IS NOT NULL THEN
        PERFORM pg_notify('trigger_changed', new_id);
    END IF;
    IF old_id IS NOT NULL AND old_id IS DISTINCT FROM new_id THEN
        PERFORM pg_notify('trigger_changed', old_id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER triggers_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON triggers
    FOR EACH ROW
    EXECUTE FUNCTION notify_trigger_changed('id');

CREATE TRIGGER trigger_conditions_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON trigger_conditions
    FOR EACH ROW
    EXECUTE FUNCTION notify_trigger_changed('trigger_id');

CREATE TRIGGER trigger_actions_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON trigger_actions
    FOR EACH ROW
    EXECUTE FUNCTION notify_trigger_changed('trigger_id');

-- ---------------------------------------------------------------------------
-- trigger_state (DEVIATION: keyed per trigger AND per scope). A stateful
-- condition may keep one state for the whole trigger (scope_key = '') or one per
-- agent (scope_key = the agent id as text), so the primary key is
-- (trigger_id, scope_key) instead of trigger_id alone.
CREATE TABLE trigger_state (
    trigger_id TEXT NOT NULL,
    scope_key TEXT NOT NULL DEFAULT '',
    state_data JSONB NOT NULL,
    last_updated TIMESTAMPTZ DEFAULT NOW(),
    PRIMARY KEY (trigger_id, scope_key),
    CONSTRAINT fk_trigger FOREIGN KEY (trigger_id) REFERENCES triggers(id) ON DELETE CASCADE
);

-- ---------------------------------------------------------------------------
-- trigger_evaluations (DEVIATION: not in the document). The matcher's idempotency
-- record: one row per (trigger, event) evaluated, written in the same transaction
-- as the trigger_state update, so an event redelivered by Kafka neither updates a
-- stateful condition twice nor fires twice. Old rows are removed by
-- cleanup_old_trigger_evaluations(). event_id holds the event's version key,
-- {id}@{block_hash}: after a reorg the canonical event at the same position is a
-- new version and is evaluated afresh.
CREATE TABLE trigger_evaluations (
    trigger_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    fired BOOLEAN NOT NULL,
    -- a firing's explain block, so the jobs of a firing can be produced again
    -- after a crash between the commit and the broker's ack (NULL when not fired)
    explain JSONB,
    evaluated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (trigger_id, event_id),
    CONSTRAINT fk_trigger FOREIGN KEY (trigger_id) REFERENCES triggers(id) ON DELETE CASCADE
);

CREATE INDEX idx_trigger_evaluations_evaluated_at ON trigger_evaluations(evaluated_at);

-- ---------------------------------------------------------------------------
-- checkpoints: as in the document. The ingest keeps last_block_number monotonic
-- in its own upsert (ON CONFLICT ... WHERE excluded.last_block_number > ...).
CREATE TABLE checkpoints (
    chain_id INTEGER PRIMARY KEY,
    last_block_number BIGINT NOT NULL,
    last_block_hash TEXT NOT NULL,
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

-- ---------------------------------------------------------------------------
-- action_results: the document's audit trail, with these DEVIATIONS:
--   * job_id is the deterministic job id carried in the Kafka message (first 32
--     hex of sha256("{trigger_id}:{event_id}:{action_id}"), docs/decisions.md),
--     not a Redis job id.
--   * no foreign key to events: events is partitioned (or a hypertable), and a
--     foreign key must reference a unique key, which on a partitioned table must
--     contain the partitioning column (block_time) that action_results does not
--     carry. event_id stays, indexed; it is unique across partitions (event_ids).
--   * attempt: 1 for the first try, n for the n-th (retry_count kept as in the
--     document for compatibility).
--   * user_id: the trigger's owner, copied by the dispatcher, so row-level
--     security scopes results per user without a join (and results of a deleted
--     trigger, whose trigger_id becomes NULL, stay visible to their owner).
--   * status 'dead': the job was dead-lettered (erc8004.actions.dlq).
--   * indexes: (job_id); (trigger_id, executed_at DESC) replaces the document's
--     idx_action_results_trigger_id, which it makes redundant; (user_id, executed_at DESC).
CREATE TABLE action_results (
    id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::TEXT,
    job_id TEXT NOT NULL, -- deterministic job id of the Kafka message
    trigger_id TEXT,
    event_id TEXT,
    user_id TEXT,
    action_type TEXT NOT NULL CHECK (action_type IN ('telegram', 'rest', 'mcp')),
    status TEXT NOT NULL CHECK (status IN ('success', 'failed', 'retrying', 'dead')),
    executed_at TIMESTAMPTZ DEFAULT NOW(),
    duration_ms INTEGER,
    error_message TEXT,
    response_data JSONB,
    retry_count INTEGER DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    CONSTRAINT fk_trigger FOREIGN KEY (trigger_id) REFERENCES triggers(id) ON DELETE SET NULL,
    CONSTRAINT fk_user FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
);

CREATE INDEX idx_action_results_job_id ON action_results(job_id);
CREATE INDEX idx_action_results_trigger_id_executed_at ON action_results(trigger_id, executed_at DESC);
CREATE INDEX idx_action_results_user_id_executed_at ON action_results(user_id, executed_at DESC);
CREATE INDEX idx_action_results_event_id ON action_results(event_id);
CREATE INDEX idx_action_results_status ON action_results(status);
CREATE INDEX idx_action_results_executed_at ON action_results(executed_at DESC);
CREATE INDEX idx_action_results_action_type ON action_results(action_type);

-- ---------------------------------------------------------------------------
-- agent_mcp_tokens (DEVIATION): an agent id is unique per chain only, so the key
-- is (chain_id, agent_id); the token is stored encrypted by the application with
-- SECRETS_KEY (token_ciphertext BYTEA instead of a plain-text token column);
-- owner_address is the on-chain owner that registered the token.
CREATE TABLE agent_mcp_tokens (
    chain_id INTEGER NOT NULL,
    agent_id BIGINT NOT NULL,
    token_ciphertext BYTEA NOT NULL,
    owner_address TEXT NOT NULL,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    PRIMARY KEY (chain_id, agent_id)
);

CREATE TRIGGER update_agent_mcp_tokens_updated_at
    BEFORE UPDATE ON agent_mcp_tokens
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

-- ---------------------------------------------------------------------------
-- Retention of action results: as in the document (90 days). Run by the schema
-- owner (maintenance), not by the services: EXECUTE is revoked from PUBLIC.
CREATE FUNCTION cleanup_old_action_results()
RETURNS void AS $$
BEGIN
    DELETE FROM action_results
    WHERE executed_at < NOW() - INTERVAL '90 days';
END;
$$ LANGUAGE plpgsql;

REVOKE EXECUTE ON FUNCTION cleanup_old_action_results() FROM PUBLIC;

-- DEVIATION (addition): trigger_evaluations only matter while Kafka may still
-- redeliver an event; older rows are deleted. Returns the number deleted.
CREATE FUNCTION cleanup_old_trigger_evaluations(older_than INTERVAL DEFAULT INTERVAL '30 days')
RETURNS BIGINT AS $$
DECLARE
    deleted BIGINT;
BEGIN
    DELETE FROM trigger_evaluations WHERE evaluated_at < NOW() - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$ LANGUAGE plpgsql;

REVOKE EXECUTE ON FUNCTION cleanup_old_trigger_evaluations(INTERVAL) FROM PUBLIC;

-- migrate:down
DROP FUNCTION IF EXISTS cleanup_old_trigger_evaluations(INTERVAL);
DROP FUNCTION IF EXISTS cleanup_old_action_results();
DROP TABLE IF EXISTS agent_mcp_tokens;
DROP TABLE IF EXISTS action_results;
DROP TABLE IF EXISTS checkpoints;
DROP TABLE IF EXISTS trigger_evaluations;
DROP TABLE IF EXISTS trigger_state;
DROP TABLE IF EXISTS trigger_actions;
DROP TABLE IF EXISTS trigger_conditions;
DROP TABLE IF EXISTS triggers;
DROP FUNCTION IF EXISTS notify_trigger_changed();
DROP FUNCTION IF EXISTS set_trigger_enabled_at();
DROP TABLE IF EXISTS api_keys;
DROP TABLE IF EXISTS users;
DROP FUNCTION IF EXISTS update_updated_at_column();
