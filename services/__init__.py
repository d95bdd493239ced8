"""The four services of erc8004-backend; each runs as ``python -m services.<name>``."""
