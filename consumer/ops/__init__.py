"""Operating campaignq: migrate, stats, replay, prune, and the web console."""
