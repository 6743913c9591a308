"""campaignq: AI-personalised outbound WhatsApp campaigns on PostgreSQL + PGMQ."""

__version__ = "0.1.0"
