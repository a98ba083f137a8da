"""Miner use cases: registration (key shown once), heartbeats, hardware lookup."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from aitbc.domain.jobs import JobStatus, MinerHardware, MinerTerms
from aitbc.domain.money import to_micro
from aitbc.errors import Conflict, NotFound, PermissionDenied
from aitbc.schemas import Heartbeat, HeartbeatAck, MinerCredentials, MinerRegistration
from aitbc.services import keys as key_service
from aitbc.services.auth import add_key, require_miner
from aitbc.services.events import heartbeat_event, publish
from aitbc.services.runtime import Principal, Runtime
from aitbc.storage import event_queries, job_queries, ledger_queries, miner_queries
from aitbc.storage.db import read, transaction
from aitbc.storage.models import Miner

log = logging.getLogger(__name__)

# A re-registration through another coordinator (several can share one PostgreSQL
# database) reaches this one's cache within this time.
HARDWARE_CACHE_SECONDS = 5.0


async def register(
    runtime: Runtime, principal: Principal | None, registration: MinerRegistration
) -> MinerCredentials | None:
    """Register a new miner (returns its key) or update one with its own key.

    Returns None for an update: the existing key stays valid and is never shown again.
    """
    gpu = registration.gpu_info
    values = {
        "capabilities": sorted(set(registration.capabilities)),
        "gpu_name": gpu.name if gpu else None,
        "gpu_memory_gb": float(gpu.memory) if gpu and gpu.memory is not None else None,
        "gpu_count": gpu.count if gpu and gpu.name else 0,
        "cpu_info": registration.cpu_info.model_dump() if registration.cpu_info else None,
        "price_micro": to_micro(registration.price),
        "concurrency": registration.concurrency,
        "template_tokens": registration.template_tokens,
    }
    now = runtime.clock()
    miner_id = registration.miner_id
    public_key = (
        key_service.parse_public_key(registration.public_key) if registration.public_key else None
    )
    try:
        credentials = await _register(runtime, principal, miner_id, values, now, public_key)
    except IntegrityError as exc:  # a concurrent registration of the same id (or key) won
        raise Conflict(
            f"miner {miner_id} is already registered", error_code="miner_exists"
        ) from exc
    runtime.hardware_cache.pop(miner_id, None)
    runtime.miner_keys_cache.pop(miner_id, None)
    runtime.estimates.invalidate()
    log.info(
        "miner %s %s: %s at %s AIT per 1,000 tokens, %d at once",
        miner_id,
        "registered" if credentials is not None else "updated its registration",
        ", ".join(sorted(set(registration.capabilities))) or "no models",
        registration.price,
        registration.concurrency,
        extra={"miner_id": miner_id},
    )
    return credentials


async def _register(
    runtime: Runtime,
    principal: Principal | None,
    miner_id: str,
    values: dict[str, Any],
    now: datetime,
    public_key: bytes | None,
) -> MinerCredentials | None:
    async with runtime.sessions.begin() as session:
        # Locked (PostgreSQL): two registrations of one miner, with keys, run one
        # after the other, so it never ends with two current keys.
        existing = await session.get(Miner, miner_id, with_for_update=True)
        if existing is not None:
            if principal is None or principal.role != "miner":
                raise Conflict(
                    f"miner {miner_id} is already registered; update it with its own key",
                    error_code="miner_exists",
                )
            require_miner(principal, miner_id)
            for key, value in values.items():
                setattr(existing, key, value)
            credentials = None
        else:
            if principal is not None and principal.role == "miner":
                raise PermissionDenied(
                    "a miner key cannot register another miner", error_code="miner_mismatch"
                )
            session.add(
                Miner(
                    id=miner_id,
                    status="online",
                    utilisation=None,
                    running_jobs=0,
                    registered_at=now,
                    last_heartbeat_at=now,
                    **values,
                )
            )
            credentials = MinerCredentials(
                miner_id=miner_id, api_key=add_key(session, runtime, "miner", miner_id)
            )
            await session.flush()
            await session.run_sync(
                lambda sync: ledger_queries.ensure_account(sync.connection(), miner_id)
            )
        if public_key is not None:
            # The miner row must exist first (same transaction).
            await session.flush()
            await session.run_sync(
                lambda sync: key_service.register_miner_key(
                    sync.connection(), miner_id, public_key, now
                )
            )
    return credentials


async def profile(runtime: Runtime, miner_id: str) -> tuple[MinerHardware, MinerTerms]:
    """What ``miner_id`` serves and its terms, from the cache or the database.

    Polls use this; a claim reads the miner's price and concurrency afresh, so a
    stale cache can offer a job but never decide a price or a limit."""
    now = time.monotonic()
    cached = runtime.hardware_cache.get(miner_id)
    if cached is not None and now - cached[2] < HARDWARE_CACHE_SECONDS:
        return cached[0], cached[1]
    # A unit of work, not an ORM session: a session gives its connection back in a
    # task of its own (AsyncSession.__aexit__), so under many concurrent polls the
    # single SQLite connection would be held across a loop turn while they queue.
    found = await read(runtime.engine, miner_queries.profile, miner_id)
    if found is None:
        raise NotFound(f"miner {miner_id} not found", error_code="miner_not_found")
    runtime.hardware_cache[miner_id] = (*found, now)
    return found


async def heartbeat(
    runtime: Runtime, principal: Principal, miner_id: str, beat: Heartbeat
) -> HeartbeatAck:
    """Record liveness, renew the leases of the miner's running jobs, report cancellations.

    A heartbeat renews exactly the leases of the jobs it lists in ``running_jobs``: a
    job the miner dropped (crash, restart) lapses and is requeued, and an empty or
    absent list renews none, so a miner cannot keep jobs it does not say it runs.
    ``cancelled_jobs`` lists the jobs the miner says it runs that are no
    longer running for it (cancelled, timed out or given to another miner): it must
    stop them.
    """
    require_miner(principal, miner_id)
    now = runtime.clock()
    lease_until = now + timedelta(seconds=runtime.settings.lease_seconds)

    listed = beat.running_jobs or []

    def work(connection: Connection) -> list[str]:
        if not miner_queries.record_heartbeat(
            connection, miner_id, now, beat.status, beat.utilisation, len(listed)
        ):
            raise NotFound(f"miner {miner_id} not found", error_code="miner_not_found")
        job_queries.renew_leases(connection, miner_id, lease_until, listed)
        stopped: list[str] = []
        if listed:
            known = job_queries.statuses(connection, listed)
            stopped = [
                job_id
                for job_id in listed
                if known.get(job_id) != (JobStatus.RUNNING.value, miner_id)
            ]
        event_queries.append(
            connection,
            [
                heartbeat_event(
                    miner_id, beat.status, beat.utilisation, len(listed) - len(stopped), now
                )
            ],
        )
        return stopped

    stopped = await transaction(runtime.engine, work)
    publish(runtime, ())
    return HeartbeatAck(miner_id=miner_id, status="ok", cancelled_jobs=stopped)


async def mark_offline(runtime: Runtime) -> int:
    """Mark miners silent for ``miner_offline_after_seconds`` as offline; return how many."""
    cutoff = runtime.clock() - timedelta(seconds=runtime.settings.miner_offline_after_seconds)
    return await transaction(runtime.engine, miner_queries.mark_silent_offline, cutoff)
