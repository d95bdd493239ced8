"""SQL of the dispatcher (role erc8004_dispatcher: reads triggers, actions, events,
MCP tokens and reorgs; inserts action_results)."""

from __future__ import annotations

#: What a batch of jobs needs from the database: whether each action still exists
#: and its trigger is enabled, and the action's encrypted signing secret.
ACTIONS_OF_JOBS = """
SELECT a.id, a.trigger_id, a.secret_ciphertext, t.enabled
FROM trigger_actions a JOIN triggers t ON t.id = a.trigger_id
WHERE a.id = ANY($1::int[])
"""

#: Attempts already recorded for these jobs (to skip redelivered ones).
RECORDED_ATTEMPTS = """
SELECT job_id, run_id, attempt, status
FROM action_results
WHERE job_id = ANY($1::text[])
"""

AGENT_CIPHERTEXT = """
SELECT token_ciphertext FROM agent_mcp_tokens WHERE chain_id = $1 AND agent_id = $2
"""

#: One row per attempt of a run; a second recording of the same attempt is a no-op.
INSERT_RESULT = """
INSERT INTO action_results
    (job_id, trigger_id, event_id, user_id, action_type, status, duration_ms,
     error_message, response_data, retry_count, attempt, run_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (job_id, (coalesce(run_id, '')), attempt) DO NOTHING
"""
