"""Matcher: consumes events, evaluates triggers, keeps trigger state, emits action jobs."""
