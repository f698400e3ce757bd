"""The operator console: a read-only page beside the admin API, in the authz process
(docs/PLAYGROUND.md, "Operator console")."""
