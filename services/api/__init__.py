"""API: users and auth, trigger management, history and stats, OpenAPI document."""
