"""The operator console (`campaignq serve`): live pages and a small API over the same views.

Layers, top to bottom: `app` (aiohttp routes, auth, headers) → `sampler` (one shared reader
per process feeding every open page) → `store` (the only module that issues queries, all
named in db/console_queries.sql). `auth` and `filters` are pure decisions with unit tests
of their own; the webhook asks `core.optout` whether a reply is a STOP.
"""
