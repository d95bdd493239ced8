"""The indexer: reads the ERC-8004 registries' logs from EVM chains over JSON-RPC and
posts them to ingest (docs/indexer.md)."""
