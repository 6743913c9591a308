"""campaignq: AI-personalised outbound WhatsApp campaigns on PostgreSQL + PGMQ."""

# Bumped with every release; CHANGELOG.md says what changed (the schema version is the newest
# migration, `campaignq_schema_migrations`).
__version__ = "0.2.0"
