"""Two coordinator apps on one database (both backends, in one process): an API key
revoked through one is refused by the other within 5 s, the configured admin key
replaces the earlier ones at start, and a signing-key rotation made by one reaches
the other (or, without the shared key file, the other stops signing when the
retired key's overlap ends instead of issuing receipts nobody can verify).

The real two-process versions are in ``tests/e2e/test_coordinators_sharing_keys.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aitbc.api import create_app
from aitbc.domain.signing import KeyRing
from aitbc.errors import InvalidRequest
from aitbc.sdk import verify_receipt
from aitbc.services import auth
from aitbc.services import keys as key_service
from aitbc.services.keys import ROTATION_OVERLAP_SECONDS
from tests.conftest import ADMIN_KEY, Coordinator, make_settings
from tests.integration.helpers import assert_error, claim_ok, complete, ok

REVOCATION_DEADLINE_SECONDS = 5.0
USAGE = {"prompt_tokens": 3, "completion_tokens": 2}


@contextlib.asynccontextmanager
async def other_coordinator(
    first: Coordinator, tmp_path: Path, name: str, **overrides: Any
) -> AsyncIterator[Coordinator]:
    """A second app on ``first``'s database (and clock), with its own data dir."""
    values: dict[str, Any] = {"data_dir": tmp_path / name}
    if first.backend == "sqlite":  # the same SQLite file
        values["database_url"] = first.runtime.settings.resolved_database_url()
    values.update(overrides)
    app = create_app(
        make_settings(tmp_path, first.backend, **values), clock=first.clock, run_sweeper=False
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Coordinator(app=app, http=http, clock=first.clock, backend=first.backend)


def key_id_of(headers: dict[str, str]) -> str:
    return hashlib.sha256(headers["X-Api-Key"].encode()).hexdigest()[:16]


async def refused_within(
    coordinator: Coordinator, headers: dict[str, str], deadline: float
) -> float:
    """Seconds until ``headers`` gets 401 on ``coordinator``; fails after ``deadline``."""
    started = time.monotonic()
    while True:
        response = await coordinator.http.get("/v1/jobs", headers=headers)
        elapsed = time.monotonic() - started
        if response.status_code == 401:
            assert_error(response, 401, "invalid_api_key")
            return elapsed
        assert response.status_code == 200, response.text
        assert elapsed < deadline, f"still accepted {elapsed:.1f} s after revocation"
        await asyncio.sleep(0.1)


# --- API keys -------------------------------------------------------------------------


async def test_a_key_revoked_through_one_coordinator_is_refused_by_the_other(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    async with other_coordinator(coordinator, tmp_path, "b") as other:
        _client_id, first = await coordinator.new_client()
        second = ok(await coordinator.http.post("/v1/auth/keys", headers=first), 201)
        second_headers = {"X-Api-Key": second["api_key"]}
        # The other coordinator has the key in its cache.
        assert ok(await other.http.get("/v1/jobs", headers=first))["total"] == 0
        revoked = await coordinator.http.delete(
            f"/v1/auth/keys/{key_id_of(first)}", headers=second_headers
        )
        ok(revoked)
        assert_error(await coordinator.http.get("/v1/jobs", headers=first), 401)
        elapsed = await refused_within(other, first, REVOCATION_DEADLINE_SECONDS)
        assert elapsed <= auth.KEY_CACHE_SECONDS + 1
        assert ok(await other.http.get("/v1/jobs", headers=second_headers))["total"] == 0


async def test_a_restart_with_a_new_admin_key_refuses_the_old_one(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    old = coordinator.admin_headers
    ok(await coordinator.http.get("/v1/admin/stats", headers=old))  # cached here
    new = {"X-Api-Key": "the-new-admin-key"}
    async with other_coordinator(coordinator, tmp_path, "b", admin_key=new["X-Api-Key"]) as b:
        assert_error(await b.http.get("/v1/admin/stats", headers=old), 401, "invalid_api_key")
        ok(await b.http.get("/v1/admin/stats", headers=new))
        # The coordinator still running with the old key configured refuses it too.
        await refused_within(coordinator, old, REVOCATION_DEADLINE_SECONDS)
        ok(await coordinator.http.get("/v1/admin/stats", headers=new))
        admin_keys = ok(await b.http.get("/v1/admin/keys", params={"role": "admin"}, headers=new))
        active = {key["key_id"]: key["revoked_at"] is None for key in admin_keys["keys"]}
        assert active == {key_id_of(old): False, key_id_of(new): True}
        # Rotation without downtime: make the next key first, then start with it.
        made = ok(await b.http.post("/v1/auth/keys", headers=new), 201)
        ok(await b.http.get("/v1/admin/stats", headers={"X-Api-Key": made["api_key"]}))

    # A start configured with a revoked admin key fails instead of bringing it back.
    with pytest.raises(InvalidRequest) as refused:
        async with other_coordinator(coordinator, tmp_path, "c", admin_key=ADMIN_KEY):
            pass
    assert refused.value.error_code == "admin_key_revoked"
    async with other_coordinator(coordinator, tmp_path, "d", admin_key=made["api_key"]) as d:
        ok(await d.http.get("/v1/admin/stats", headers={"X-Api-Key": made["api_key"]}))
        assert_error(await d.http.get("/v1/admin/stats", headers=new), 401, "invalid_api_key")


async def test_the_admin_key_file_replaces_earlier_admin_keys(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    """Without AITBC_ADMIN_KEY the generated ``admin.key`` is the configured key."""
    async with other_coordinator(coordinator, tmp_path, "b", admin_key=None) as b:
        generated = {"X-Api-Key": (tmp_path / "b" / "admin.key").read_text().strip()}
        ok(await b.http.get("/v1/admin/stats", headers=generated))
        old = coordinator.admin_headers
        assert_error(await b.http.get("/v1/admin/stats", headers=old), 401, "invalid_api_key")


# --- signing keys ---------------------------------------------------------------------


MINER_NUMBERS = itertools.count()


@dataclass
class Attempt:
    """A job run up to its completion: the miner, and the completion's answer."""

    job_id: str
    miner_id: str
    miner: dict[str, str]
    response: httpx.Response


async def run_job(coordinator: Coordinator) -> Attempt:
    """Submit, claim and complete one job through ``coordinator`` (a new client and
    miner each time)."""
    _client_id, client = await coordinator.new_client()
    miner_id = f"m{next(MINER_NUMBERS)}"
    miner = await coordinator.new_miner(miner_id)
    job = await coordinator.submit(client)
    await claim_ok(coordinator, job["job_id"], miner_id, miner)
    coordinator.clock.advance(1)
    response = await complete(coordinator, job["job_id"], miner_id, miner, "x" * 6, USAGE)
    return Attempt(job["job_id"], miner_id, miner, response)


async def published(coordinator: Coordinator) -> KeyRing:
    return KeyRing.from_document(ok(await coordinator.http.get("/v1/keys")))


def signed_by(attempt: Attempt) -> str:
    key_id: str = ok(attempt.response)["signature"]["key_id"]
    return key_id


async def test_a_coordinator_sharing_the_key_file_follows_a_rotation(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    key_file = coordinator.runtime.settings.resolved_signing_key_file()
    async with other_coordinator(coordinator, tmp_path, "b", signing_key_file=key_file) as b:
        old = coordinator.runtime.signing_key().key_id
        assert b.runtime.signing_key().key_id == old
        before = await run_job(b)
        assert signed_by(before) == old

        rotated = ok(
            await coordinator.http.post("/v1/admin/keys/rotate", headers=coordinator.admin_headers),
            201,
        )
        new = rotated["key_id"]
        assert await key_service.follow_rotation(b.runtime) is None
        assert b.runtime.signing_key().key_id == new
        after = await run_job(b)
        assert signed_by(after) == new
        coordinator.clock.advance(ROTATION_OVERLAP_SECONDS + 1)
        later = await run_job(b)
        assert signed_by(later) == new
        keys = await published(b)
        for attempt in (before, after, later):
            verify_receipt(attempt.response.content, keys)
        # Nothing changes on a check with nothing to follow.
        assert await key_service.follow_rotation(b.runtime) is None
        assert await key_service.follow_rotation(coordinator.runtime) is None
        assert coordinator.runtime.signing_key().key_id == new


async def test_a_coordinator_without_the_current_key_stops_signing_when_the_overlap_ends(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    shared = coordinator.runtime.settings.resolved_signing_key_file()
    copy = tmp_path / "b-secrets" / "coordinator.pem"
    copy.parent.mkdir()
    shutil.copy(shared, copy)
    async with other_coordinator(coordinator, tmp_path, "b", signing_key_file=copy) as b:
        old = b.runtime.signing_key().key_id
        rotate = coordinator.http.post("/v1/admin/keys/rotate", headers=coordinator.admin_headers)
        ok(await rotate, 201)
        problem = await key_service.follow_rotation(b.runtime)
        assert problem is not None and str(copy) in problem and old in problem, problem
        # Within the overlap the retired key still signs valid receipts.
        during = await run_job(b)
        assert signed_by(during) == old
        verify_receipt(during.response.content, await published(b))

        # After it, completing through b is refused and the job stays running.
        coordinator.clock.advance(ROTATION_OVERLAP_SECONDS)
        refused = await run_job(b)
        assert_error(refused.response, 503, "signing_key_retired")
        job = ok(await b.http.get(f"/v1/jobs/{refused.job_id}", headers=refused.miner))
        assert job["status"] == "running"
        assert await key_service.follow_rotation(b.runtime) == problem

        # Given the current key, it signs again at the next check.
        shutil.copy(shared, copy)
        assert await key_service.follow_rotation(b.runtime) is None
        retried = await complete(b, refused.job_id, refused.miner_id, refused.miner, "x" * 6, USAGE)
        assert ok(retried)["signature"]["key_id"] == coordinator.runtime.signing_key().key_id
        verify_receipt(retried.content, await published(b))
