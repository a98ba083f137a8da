"""Application factory: database, migrations, admin key, sweeper and routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from aitbc import __version__
from aitbc.api.errors import install_error_handlers
from aitbc.api.middleware import AuthRateLimitMiddleware, BodyLimitsMiddleware
from aitbc.api.observability import ObservabilityMiddleware
from aitbc.api.rate_limits import build_rate_limiter
from aitbc.api.routers import (
    accounts,
    admin,
    auth,
    clients,
    events,
    exchange,
    explorer,
    files,
    jobs,
    marketplace,
    miners,
    openai,
    receipts,
    system,
)
from aitbc.schemas import ErrorBody
from aitbc.services import exchange as exchange_service
from aitbc.services import keys, ledger, sweeper
from aitbc.services.auth import ensure_admin_key
from aitbc.services.event_bus import build_event_bus
from aitbc.services.matching import Exchange
from aitbc.services.runtime import Clock, Runtime, utc_now
from aitbc.settings import Settings
from aitbc.storage import db, event_queries, migrate

log = logging.getLogger(__name__)


def build_runtime(settings: Settings, clock: Clock = utc_now) -> Runtime:
    """Engine, sessions and in-memory state for ``settings`` (no I/O yet)."""
    url = settings.resolved_database_url()
    if db.is_sqlite(url):
        # Private: it holds the database (results, key hashes) and the admin key.
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = db.create_engine(url)
    runtime = Runtime(
        settings=settings, engine=engine, sessions=db.create_sessionmaker(engine), clock=clock
    )
    runtime.exchange = Exchange.from_settings(settings.exchange_markets)
    runtime.event_bus = build_event_bus(settings, url)
    runtime.events.on_commit = runtime.event_bus.published
    runtime.metrics.install_state_collector(runtime)
    return runtime


def create_app(settings: Settings, *, clock: Clock = utc_now, run_sweeper: bool = True) -> FastAPI:
    """The coordinator ASGI app. Start-up migrates the database and ensures an admin key."""
    runtime = build_runtime(settings, clock)
    rate_limiter = build_rate_limiter(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await migrate.upgrade(runtime.engine)
            written = await ensure_admin_key(runtime)
            if written is not None:
                print(f"aitbc: admin API key written to {written}", flush=True)
            created = await keys.start(runtime)
            if created is not None:
                print(f"aitbc: receipt signing key written to {created}", flush=True)
        except BaseException:
            # A refused start (a revoked admin key, a retired signing key) leaves no
            # database connection open.
            await runtime.engine.dispose()
            raise
        log.info("signing receipts with key %s", runtime.signing_key().key_id)
        await ledger.ensure_genesis(runtime)
        await exchange_service.start(runtime)
        await rate_limiter.start()
        checkpointer = db.start_wal_checkpointer(runtime.engine)
        await runtime.event_bus.start(runtime.events.remote_committed)
        event_reader = event_queries.sqlite_reader(runtime.engine)
        pump = asyncio.create_task(
            runtime.events.run(runtime.engine, settings, event_reader), name="event-pump"
        )
        tasks = (
            [
                asyncio.create_task(sweeper.run_forever(runtime)),
                # Follow a signing-key rotation made by another coordinator.
                asyncio.create_task(keys.follow_forever(runtime)),
                asyncio.create_task(ledger.run_forever(runtime)),
                # Follow the exchange batches other coordinators commit.
                asyncio.create_task(exchange_service.follow_forever(runtime)),
            ]
            if run_sweeper
            else []
        )
        tasks.append(pump)
        try:
            yield
        finally:
            runtime.events.close_all()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runtime.event_bus.aclose()
            if event_reader is not None:
                event_reader.close()
            await rate_limiter.aclose()
            await runtime.engine.dispose()
            if checkpointer is not None:
                await asyncio.to_thread(checkpointer.stop)

    app = FastAPI(
        title="AITBC Coordinator API",
        version=__version__,
        description="Submit AI compute jobs, run them as a miner, and follow the network.",
        lifespan=lifespan,
        responses={
            422: {"model": ErrorBody, "description": "Validation Error"},
            "4XX": {"model": ErrorBody, "description": "Error"},
        },
    )
    app.state.runtime = runtime
    app.state.rate_limiter = rate_limiter
    install_error_handlers(app)
    routers = (
        system,
        clients,
        auth,
        miners,
        jobs,
        receipts,
        files,
        admin,
        accounts,
        explorer,
        events,
        exchange,
        marketplace,
    )
    # Routes are matched in inclusion order: placing an order, the exchange's hottest
    # request, is matched first (two routes: the job routes after it barely notice).
    app.include_router(exchange.orders_router)
    for router in (*routers, openai):
        app.include_router(router.router)
    app.add_middleware(AuthRateLimitMiddleware, runtime=runtime, limiter=rate_limiter)
    app.add_middleware(
        BodyLimitsMiddleware,
        max_bytes=settings.max_request_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        read_timeout=settings.request_read_timeout_seconds,
    )
    # Outermost: every answer is counted and logged, 413s and 429s included.
    app.add_middleware(ObservabilityMiddleware, metrics=runtime.metrics)
    return app
