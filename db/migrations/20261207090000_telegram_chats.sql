-- Telegram chats linked by their owners (issue 14): the operator's bot posts only
-- into chats a user linked, never into any chat a trigger names.
--
-- A user asks the API for a one-time link code (telegram_link_codes keeps only its
-- SHA-256), then sends `/start <code>` to the bot in the chat: in a private chat
-- with the bot, in a group as one of its administrators, or as a post of a channel
-- the bot administers. The dispatcher reads the bot's updates (getUpdates, one
-- replica at a time under an advisory lock, the next offset in telegram_updates,
-- stored in the same transaction as the links it produced) and records the link in
-- telegram_chats. The API lists and removes a user's links; triggers may name only
-- linked chats (422), and the dispatcher refuses a job whose chat is not linked to
-- the trigger's owner without calling Telegram.

-- migrate:up
CREATE TABLE telegram_link_codes (
    code_sha256 BYTEA PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ,
    used_in_chat TEXT
);
CREATE INDEX telegram_link_codes_user ON telegram_link_codes (user_id, expires_at);

CREATE TABLE telegram_chats (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- Telegram's numeric chat id, as text (channels and supergroups: -100...)
    chat_id TEXT NOT NULL CHECK (chat_id ~ '^-?[0-9]{1,20}$'),
    chat_type TEXT NOT NULL CHECK (chat_type IN ('private', 'group', 'supergroup', 'channel')),
    title TEXT,
    -- the chat's public @username when it was linked (lower case, without the @)
    username TEXT,
    -- the Telegram user who sent the code (NULL for a channel's post)
    linked_by BIGINT,
    linked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, chat_id)
);
CREATE INDEX telegram_chats_chat ON telegram_chats (chat_id);
CREATE INDEX telegram_chats_username ON telegram_chats (user_id, username)
    WHERE username IS NOT NULL;

CREATE TABLE telegram_updates (
    id INT PRIMARY KEY CHECK (id = 1),
    next_offset BIGINT NOT NULL DEFAULT 0,
    polled_at TIMESTAMPTZ
);
INSERT INTO telegram_updates (id) VALUES (1);

ALTER TABLE telegram_link_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE telegram_chats ENABLE ROW LEVEL SECURITY;

CREATE POLICY telegram_link_codes_user_isolation ON telegram_link_codes
    FOR ALL TO erc8004_api
    USING (user_id = current_app_user_id())
    WITH CHECK (user_id = current_app_user_id());
CREATE POLICY telegram_link_codes_dispatcher ON telegram_link_codes
    FOR ALL TO erc8004_dispatcher USING (true) WITH CHECK (true);

CREATE POLICY telegram_chats_user_isolation ON telegram_chats
    FOR ALL TO erc8004_api
    USING (user_id = current_app_user_id())
    WITH CHECK (user_id = current_app_user_id());
CREATE POLICY telegram_chats_dispatcher ON telegram_chats
    FOR ALL TO erc8004_dispatcher USING (true) WITH CHECK (true);

-- The API creates codes and lists and removes links; only the dispatcher, reading
-- the bot's updates, creates links.
GRANT SELECT, INSERT, DELETE ON telegram_link_codes TO erc8004_api;
GRANT SELECT, DELETE ON telegram_chats TO erc8004_api;
GRANT SELECT, UPDATE ON telegram_link_codes TO erc8004_dispatcher;
GRANT SELECT, INSERT, UPDATE, DELETE ON telegram_chats TO erc8004_dispatcher;
GRANT SELECT, UPDATE ON telegram_updates TO erc8004_dispatcher;

-- migrate:down
DROP TABLE telegram_updates;
DROP TABLE telegram_chats;
DROP TABLE telegram_link_codes;
