"""The consumer and producer at run time, and their edges: PostgreSQL, the LLM, the gateway."""
