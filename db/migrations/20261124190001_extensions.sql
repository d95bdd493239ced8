-- Extensions. The schema document creates timescaledb and pgcrypto unconditionally;
-- here both are optional (see db/README.md):
--   * pgcrypto: gen_random_uuid() is built into PostgreSQL 13+, so nothing in the
--     schema needs pgcrypto; it is created when the server ships it (it is a trusted
--     extension, so the schema owner may create it) and skipped otherwise.
--   * timescaledb: created only where the server has it installed AND preloaded
--     (shared_preload_libraries); the later migrations then take the hypertable path.
--     Elsewhere they take the native-partitioning path.

-- migrate:up
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pgcrypto;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pgcrypto not created (insufficient privilege): gen_random_uuid() is core, continuing';
        END;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;
END
$$;

-- migrate:down
-- Fails (rather than cascading) if objects outside these migrations still use them.
DROP EXTENSION IF EXISTS timescaledb;
DROP EXTENSION IF EXISTS pgcrypto;
