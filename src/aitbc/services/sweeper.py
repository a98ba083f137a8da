"""The background sweeper: lapsed leases, timeouts, silent miners and expired files,
on a fixed beat."""

from __future__ import annotations

import asyncio
import logging

from aitbc.services import files, jobs, miners
from aitbc.services.runtime import Runtime

log = logging.getLogger(__name__)


async def sweep_once(runtime: Runtime) -> dict[str, int]:
    """One pass: what changed, by kind."""
    counts = await jobs.sweep(runtime)
    counts["miners_offline"] = await miners.mark_offline(runtime)
    counts["files_expired"] = await files.delete_expired(runtime)
    return counts


async def run_forever(runtime: Runtime) -> None:
    """Sweep every ``sweep_interval_seconds`` until cancelled; errors are logged, not fatal."""
    interval = runtime.settings.sweep_interval_seconds
    while True:
        try:
            counts = await sweep_once(runtime)
            if any(counts.values()):
                log.info("sweep: %s", counts)
        except asyncio.CancelledError:
            raise
        except Exception:  # the sweeper must outlive a database hiccup
            log.exception("sweep failed; retrying in %.1f s", interval)
        await asyncio.sleep(interval)
