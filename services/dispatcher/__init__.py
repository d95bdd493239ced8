"""Dispatcher: consumes action jobs, runs telegram/rest/mcp actions, retries, audits."""
