"""SQL of the dispatcher (role erc8004_dispatcher: reads triggers, actions, events,
MCP tokens, reorgs and linked Telegram chats; inserts action_results): the batch's
lookups, the results writer's insert, the MCP token, and the registration resolver's reads."""

from __future__ import annotations

from shared.contract.sql import AGENT_OWNER, CANONICAL

#: What a batch of jobs needs from the database: whether each action still exists
#: and its trigger is enabled, the action's encrypted signing secret and headers, and
#: for a Telegram action the numeric id of its chat if the trigger's owner linked it
#: (named by id, or by the @username it had when linked).
ACTIONS_OF_JOBS = """
SELECT a.id, a.trigger_id, a.secret_ciphertext, a.secret_headers_ciphertext, t.enabled,
       c.chat_id AS telegram_chat
FROM trigger_actions a JOIN triggers t ON t.id = a.trigger_id
LEFT JOIN LATERAL (
    SELECT c.chat_id FROM telegram_chats c
    WHERE a.action_type = 'telegram' AND c.user_id = t.user_id
      AND (c.chat_id = a.config->>'chat_id'
           OR '@' || c.username = lower(a.config->>'chat_id'))
    ORDER BY c.chat_id = a.config->>'chat_id' DESC LIMIT 1) c ON true
WHERE a.id = ANY($1::int[])
"""

#: Which of these event versions (id, block time, block hash) a reorg replaced: the
#: reorg recorded after the version was stored that covers its block, if any.
REPLACED_VERSIONS = """
SELECT v.n, r.id AS reorg_id
FROM unnest($1::text[], $2::timestamptz[], $3::text[])
     WITH ORDINALITY AS v(id, block_time, block_hash, n)
JOIN events e
  ON e.id = v.id AND e.block_time = v.block_time AND e.block_hash = v.block_hash
JOIN LATERAL (
    SELECT r.id FROM reorgs r
    WHERE r.chain_id = e.chain_id AND e.block_number >= r.from_block
      AND (r.to_block IS NULL OR e.block_number <= r.to_block)
      AND r.created_at > e.created_at
    ORDER BY r.created_at LIMIT 1) r ON true
"""

#: Attempts already recorded for these jobs (to skip redelivered ones): by index even
#: while action_results has no statistics (migration 20261211090000).
RECORDED_ATTEMPTS = "SELECT job_id, run_id, attempt, status FROM recorded_attempts($1::text[])"

#: The agent's MCP token and its scope (NULL: any tool / any user), only while
#: whoever set it still owns the agent (its latest
#: canonical Registered or Transfer event names them; in the job's event's Identity
#: registry, $3, when it names one): a token does not pass to the agent's next
#: owner, nor to the server that owner's registration file names, nor to agent N of
#: another registry on the chain that someone else owns. A token set for the agent's
#: own registry comes before one set without a registry ('').
AGENT_CIPHERTEXT = f"""
SELECT t.token_ciphertext, t.allowed_tools, t.allowed_users, t.agent_registry
FROM agent_mcp_tokens t
WHERE t.chain_id = $1 AND t.agent_id = $2 AND t.agent_registry IN (coalesce($3, ''), '')
  AND lower(t.owner_address) = lower(({AGENT_OWNER}))
ORDER BY t.agent_registry DESC
LIMIT 1
"""  # noqa: S608 (constants)

#: One row per attempt of a run; a second recording of the same attempt is a no-op.
#: event_version is the job's event version ({id}@{block_hash}), trigger_version the
#: trigger's version at firing time (from the explain): the API joins the firing's
#: explain on them.
INSERT_RESULT = """
INSERT INTO action_results
    (job_id, trigger_id, event_id, user_id, action_type, status, duration_ms,
     error_message, response_data, retry_count, attempt, run_id, event_version,
     trigger_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (job_id, (coalesce(run_id, '')), attempt) DO NOTHING
"""

#: INSERT_RESULT for many rows in one statement (one array per column, in its order):
#: one execution and one implicit transaction for a whole flush. DO NOTHING also
#: skips a row that repeats an earlier one of the same statement.
INSERT_RESULTS = """
INSERT INTO action_results
    (job_id, trigger_id, event_id, user_id, action_type, status, duration_ms,
     error_message, response_data, retry_count, attempt, run_id, event_version,
     trigger_version)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::int[], $8::text[], $9::jsonb[], $10::int[],
                     $11::int[], $12::text[], $13::text[], $14::int[])
ON CONFLICT (job_id, (coalesce(run_id, '')), attempt) DO NOTHING
"""

#: The agent's current URI: its latest canonical Registered or URIUpdated event (of
#: its Identity registry, $3, when the job's event names it).
LATEST_URI = (
    """
SELECT e.token_uri FROM events e
WHERE e.chain_id = $1 AND e.agent_id = $2 AND e.registry = 'identity'
  AND e.event_type IN ('Registered', 'URIUpdated')
  AND ($3::text IS NULL OR e.agent_registry = $3)
  AND """
    + CANONICAL
    + " ORDER BY e.block_number DESC, e.log_index DESC LIMIT 1"
)

#: Where the cached file stops being valid: the latest identity event that may
#: change it (a new URI, or ERC-4906 MetadataUpdate).
LATEST_CHANGE = (
    """
SELECT e.block_number, e.log_index FROM events e
WHERE e.chain_id = $1 AND e.agent_id = $2 AND e.registry = 'identity'
  AND e.event_type IN ('Registered', 'URIUpdated', 'MetadataUpdate')
  AND ($3::text IS NULL OR e.agent_registry = $3)
  AND """
    + CANONICAL
    + " ORDER BY e.block_number DESC, e.log_index DESC LIMIT 1"
)
