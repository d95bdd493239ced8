-- A REST action's credential headers (Authorization, API keys) are kept apart from
-- its config: encrypted with SECRETS_KEY (context trigger_actions:<id>:headers, a
-- JSON object of name -> value), never returned by the API and never put in the
-- jobs on Kafka; only their names are kept in clear, for the API to show.

-- migrate:up
ALTER TABLE trigger_actions
    ADD COLUMN secret_headers_ciphertext BYTEA,
    ADD COLUMN secret_header_names TEXT[];

-- migrate:down
ALTER TABLE trigger_actions
    DROP COLUMN IF EXISTS secret_header_names,
    DROP COLUMN IF EXISTS secret_headers_ciphertext;
