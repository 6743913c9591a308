"""Run the console: check the tokens and the bind address, then serve until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web
from loguru import logger

from ...errors import ConfigurationError
from ...logs import register_secret
from ...settings import Settings, secret_value
from .app import ConsoleConfig, create_app
from .auth import Tokens, may_bind, token_problem
from .store import Store


def console_config(settings: Settings) -> ConsoleConfig:
    tokens = Tokens(
        admin=secret_value(settings.console_token), read=secret_value(settings.console_read_token)
    )
    return ConsoleConfig(
        tokens=tokens,
        webhook_secret=secret_value(settings.webhook_secret),
        sample_interval_s=settings.console_sample_interval_s,
        session_idle_s=settings.console_session_idle_s,
        trust_proxy=settings.console_trust_proxy,
    )


def check_bind(settings: Settings) -> ConsoleConfig:
    """The console's config, or a ConfigurationError before anything starts (database included)."""
    config = console_config(settings)
    register_secret(config.tokens.admin)
    register_secret(config.tokens.read)
    register_secret(config.webhook_secret)  # it is in the webhook's URL path
    problem = token_problem(config.tokens)
    if problem is not None:
        raise ConfigurationError(f"refusing to serve the console: {problem}")
    if not may_bind(settings.console_host, config.tokens):
        raise ConfigurationError(
            f"refusing to serve the console on {settings.console_host}: without CAMPAIGNQ_CONSOLE_TOKEN "
            "or CAMPAIGNQ_CONSOLE_READ_TOKEN it binds loopback only (127.0.0.1)"
        )
    return config


def serve(settings: Settings, database_url: str, config: ConsoleConfig) -> int:
    asyncio.run(_serve(settings, database_url, config, settings.console_host, settings.console_port))
    return 0


async def _serve(settings: Settings, database_url: str, config: ConsoleConfig, host: str, port: int) -> None:
    store = Store(database_url, prices=settings.model_prices)
    app = create_app(store, config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0] if runner.addresses else (host, port)
    url = f"http://{_host_for_url(str(bound[0]))}:{bound[1]}/"
    # One line a script (the demo, the tests) can wait for; the URL never holds a token.
    print(f"campaignq console: {url}", flush=True)
    if not config.tokens.admin:
        logger.info("console: no CAMPAIGNQ_CONSOLE_TOKEN set: view only, every action is refused")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        if sys.platform != "win32":
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
