"""Contract package shared by every service: pydantic models, no I/O."""
