-- Access tokens (JWTs) are stateless until they expire; "log out everywhere" sets
-- this instant, and a token issued at or before it (iat, whole seconds) is refused.

-- migrate:up
ALTER TABLE users ADD COLUMN tokens_valid_after TIMESTAMPTZ;

-- migrate:down
ALTER TABLE users DROP COLUMN IF EXISTS tokens_valid_after;
