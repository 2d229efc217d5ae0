"""Registry: every model version with its lineage, the promotion gate, aliases and the audit log."""
