"""The audit trail: key and membership changes, recorded in the change's transaction,
and read back newest first. May import the foundation only; keys import it."""
