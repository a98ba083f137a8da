"""API keys and roles on every endpoint, the admin endpoints and their figures, and the
shape of error bodies."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import Coordinator
from tests.integration.helpers import (
    assert_error,
    claim_ok,
    complete,
    fail,
    get_job,
    heartbeat,
    ok,
    running_job,
    sweep,
)


@dataclass(frozen=True)
class Call:
    """One request to an endpoint; ``{job}`` in the path is filled in at send time."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    upload: bool = False

    async def send(
        self, coordinator: Coordinator, headers: dict[str, str], job_id: str
    ) -> httpx.Response:
        return await coordinator.http.request(
            self.method,
            self.path.format(job=job_id),
            json=self.json,
            params=self.params,
            files={"file": ("a.txt", b"hello", "text/plain")} if self.upload else None,
            headers=headers,
        )

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


CLIENT_CALLS = [
    Call("POST", "/v1/jobs", json={"prompt": "hi"}),
    Call("GET", "/v1/jobs"),
    Call("GET", "/v1/jobs/history", params={"from": "2026-02-13", "to": "2026-02-13"}),
    Call("DELETE", "/v1/jobs/{job}"),
    Call("POST", "/v1/jobs/{job}/cancel"),
    Call("POST", "/v1/files", upload=True),
]
# Readable by a client (its own jobs) and by the miner that holds the job.
JOB_READ_CALLS = [
    Call("GET", "/v1/jobs/{job}"),
    Call("GET", "/v1/jobs/{job}/download"),
]
MINER_CALLS = [
    Call("POST", "/v1/miners/m1/heartbeat", json={"running_jobs": []}),
    Call("GET", "/v1/jobs/available", params={"miner_id": "m1"}),
    Call("POST", "/v1/jobs/{job}/claim", json={"miner_id": "m1"}),
    Call("POST", "/v1/jobs/{job}/progress", json={"miner_id": "m1", "progress": 5}),
    Call("POST", "/v1/jobs/{job}/fail", json={"miner_id": "m1", "error": "x"}),
    Call("POST", "/v1/jobs/{job}/complete", json={"miner_id": "m1", "result": "x"}),
]
ADMIN_CALLS = [
    Call("GET", "/v1/admin/miners"),
    Call("GET", "/v1/admin/jobs"),
    Call("GET", "/v1/admin/stats"),
    Call("POST", "/v1/admin/clients", json={"name": "ops"}),
    Call("GET", "/v1/admin/keys"),
    Call("DELETE", "/v1/admin/keys/0123456789abcdef"),
]
# Any role, on the caller's own keys.
OWN_KEY_CALLS = [
    Call("GET", "/v1/auth/keys"),
    Call("POST", "/v1/auth/keys"),
    Call("DELETE", "/v1/auth/keys/0123456789abcdef"),
]
PROTECTED_CALLS = [*CLIENT_CALLS, *JOB_READ_CALLS, *MINER_CALLS, *ADMIN_CALLS, *OWN_KEY_CALLS]


async def _world(coordinator: Coordinator) -> tuple[dict[str, str], dict[str, str], str]:
    """A client with a pending job and miner m1: (client headers, miner headers, job id)."""
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job = await coordinator.submit(client)
    return client, miner, job["job_id"]


async def test_every_endpoint_refuses_a_missing_key(coordinator: Coordinator) -> None:
    client, _miner, job_id = await _world(coordinator)
    for call in PROTECTED_CALLS:
        response = await call.send(coordinator, {}, job_id)
        assert response.status_code == 401, f"{call}: {response.text}"
        assert_error(response, 401, "missing_api_key")
    empty = await Call("GET", "/v1/jobs").send(coordinator, {"X-Api-Key": ""}, job_id)
    assert_error(empty, 401, "missing_api_key")
    # Nothing happened to the job.
    assert (await get_job(coordinator, job_id, client))["status"] == "pending"


async def test_every_endpoint_refuses_an_unknown_key(coordinator: Coordinator) -> None:
    client, _miner, job_id = await _world(coordinator)
    unknown = {"X-Api-Key": "aitbc_client_not-a-real-key"}
    register = Call("POST", "/v1/miners/register", json={"miner_id": "m9", "capabilities": ["x"]})
    for call in [*PROTECTED_CALLS, register]:
        response = await call.send(coordinator, unknown, job_id)
        assert response.status_code == 401, f"{call}: {response.text}"
        assert_error(response, 401, "invalid_api_key")
    assert (await get_job(coordinator, job_id, client))["status"] == "pending"
    miners = ok(await coordinator.http.get("/v1/admin/miners", headers=coordinator.admin_headers))
    assert [m["miner_id"] for m in miners] == ["m1"]


async def test_client_keys_are_refused_on_miner_and_admin_endpoints(
    coordinator: Coordinator,
) -> None:
    client, _miner, job_id = await _world(coordinator)
    for call in [*MINER_CALLS, *ADMIN_CALLS]:
        response = await call.send(coordinator, client, job_id)
        assert response.status_code == 403, f"{call}: {response.text}"
        assert_error(response, 403)
    assert (await get_job(coordinator, job_id, client))["status"] == "pending"


async def test_miner_keys_are_refused_on_client_and_admin_endpoints(
    coordinator: Coordinator,
) -> None:
    client, miner, job_id = await _world(coordinator)
    for call in [*CLIENT_CALLS, *ADMIN_CALLS]:
        response = await call.send(coordinator, miner, job_id)
        assert response.status_code == 403, f"{call}: {response.text}"
        assert_error(response, 403)
    # A job the miner does not hold is invisible to it.
    for call in JOB_READ_CALLS:
        response = await call.send(coordinator, miner, job_id)
        assert response.status_code == 404, f"{call}: {response.text}"
        assert_error(response, 404)
    assert (await get_job(coordinator, job_id, client))["status"] == "pending"
    assert ok(await coordinator.http.get("/v1/jobs", headers=client))["total"] == 1


async def test_a_miner_key_acts_only_as_its_own_miner(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    m2 = await coordinator.new_miner("m2")
    pending = (await coordinator.submit(client))["job_id"]
    held_by_m2 = (await running_job(coordinator, client, "m2", m2))["job_id"]

    refused = [
        await coordinator.http.post("/v1/miners/m2/heartbeat", json={}, headers=m1),
        await coordinator.http.get("/v1/jobs/available", params={"miner_id": "m2"}, headers=m1),
        await coordinator.claim(pending, "m2", m1),
        await coordinator.http.post(
            f"/v1/jobs/{held_by_m2}/progress", json={"miner_id": "m2", "progress": 9}, headers=m1
        ),
        await complete(coordinator, held_by_m2, "m2", m1),
        await fail(coordinator, held_by_m2, "m2", m1, retryable=False),
        await coordinator.http.post(
            "/v1/miners/register", json={"miner_id": "m2", "capabilities": ["x"]}, headers=m1
        ),
    ]
    for response in refused:
        assert_error(response, 403)
    assert (await get_job(coordinator, pending, client))["status"] == "pending"
    held = await get_job(coordinator, held_by_m2, client)
    assert held["status"] == "running"
    assert held["progress"] == 0


async def test_a_miner_reads_the_job_it_holds(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    job_id = (await running_job(coordinator, client, "m1", m1))["job_id"]
    assert (await get_job(coordinator, job_id, m1))["miner_id"] == "m1"


async def test_open_endpoints_need_no_key(coordinator: Coordinator) -> None:
    health = ok(await coordinator.http.get("/health"))
    assert health["status"] == "ok"
    ok(await coordinator.http.post("/v1/clients/register", json={"name": "x"}), 201)
    ok(await coordinator.http.post("/v1/clients/register"), 201)
    ok(
        await coordinator.http.post(
            "/v1/miners/register", json={"miner_id": "m1", "capabilities": ["x"]}
        ),
        201,
    )


# --- admin -----------------------------------------------------------------------------


async def test_admin_sees_and_acts_on_everything(coordinator: Coordinator) -> None:
    admin = coordinator.admin_headers
    _alice_id, alice = await coordinator.new_client()
    _bob_id, bob = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    first = (await coordinator.submit(alice))["job_id"]
    coordinator.clock.advance(1)
    second = (await running_job(coordinator, bob, "m1", m1))["job_id"]
    coordinator.clock.advance(1)
    third = (await coordinator.submit(bob))["job_id"]

    everything = ok(await coordinator.http.get("/v1/admin/jobs", headers=admin))
    assert [job["job_id"] for job in everything["jobs"]] == [third, second, first]
    assert everything["total"] == 3
    assert everything["has_more"] is False
    running = ok(
        await coordinator.http.get("/v1/admin/jobs", params={"status": "running"}, headers=admin)
    )
    assert [job["job_id"] for job in running["jobs"]] == [second]
    paged = ok(
        await coordinator.http.get(
            "/v1/admin/jobs", params={"limit": 1, "offset": 1}, headers=admin
        )
    )
    assert [job["job_id"] for job in paged["jobs"]] == [second]
    assert paged["has_more"] is True
    assert ok(await coordinator.http.get("/v1/jobs", headers=admin))["total"] == 3

    assert (await get_job(coordinator, first, admin))["job_id"] == first
    cancelled = ok(await coordinator.http.delete(f"/v1/jobs/{first}", headers=admin))
    assert cancelled["status"] == "cancelled"
    assert (await get_job(coordinator, first, alice))["status"] == "cancelled"


async def test_admin_miners(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    gpu = await coordinator.new_miner(
        "gpu-1",
        models=["smollm2-135m", "llama3.2"],
        price="0.125",
        gpu_info={"name": "NVIDIA L4", "memory": "24GB", "count": 2},
    )
    await coordinator.new_miner("cpu-1")
    for _ in range(2):
        job_id = (await running_job(coordinator, client, "gpu-1", gpu))["job_id"]
        ok(await complete(coordinator, job_id, "gpu-1", gpu))
    await running_job(coordinator, client, "gpu-1", gpu)
    coordinator.clock.advance(61)
    await heartbeat(coordinator, "gpu-1", gpu, utilisation=75)
    await sweep(coordinator)

    miners = ok(await coordinator.http.get("/v1/admin/miners", headers=coordinator.admin_headers))
    by_id = {miner["miner_id"]: miner for miner in miners}
    assert set(by_id) == {"gpu-1", "cpu-1"}
    gpu_view = by_id["gpu-1"]
    assert gpu_view["capabilities"] == ["llama3.2", "smollm2-135m"]
    assert gpu_view["gpu_info"] == {"name": "NVIDIA L4", "memory": 24.0, "count": 2}
    assert gpu_view["price"] == 0.125
    assert gpu_view["status"] == "online"
    assert gpu_view["utilisation"] == 75
    assert gpu_view["jobs_completed"] == 2
    assert gpu_view["registered_at"] == "2026-02-13T10:00:00Z"
    assert gpu_view["last_heartbeat_at"] == "2026-02-13T10:01:01Z"
    assert by_id["cpu-1"]["status"] == "offline"
    assert by_id["cpu-1"]["jobs_completed"] == 0
    assert by_id["cpu-1"]["price"] == 0


async def test_admin_stats(coordinator: Coordinator) -> None:
    admin = coordinator.admin_headers
    empty = ok(await coordinator.http.get("/v1/admin/stats", headers=admin))
    assert empty == {
        "jobs_by_status": {
            "pending": 0,
            "running": 0,
            "completed": 0,
            "failed": 0,
            "cancelled": 0,
        },
        "total_jobs": 0,
        "queue_depth": 0,
        "running_jobs": 0,
        "online_miners": 0,
        "total_miners": 0,
        "completed_last_minute": 0,
    }

    _client_id, client = await coordinator.new_client()
    m1 = await coordinator.new_miner("m1")
    m2 = await coordinator.new_miner("m2")
    await coordinator.new_miner("m3")  # goes silent
    old = (await running_job(coordinator, client, "m1", m1))["job_id"]
    ok(await complete(coordinator, old, "m1", m1))  # completed two minutes before the check

    coordinator.clock.advance(120)
    await heartbeat(coordinator, "m1", m1)
    await heartbeat(coordinator, "m2", m2)
    recent = (await running_job(coordinator, client, "m1", m1))["job_id"]
    coordinator.clock.advance(30)
    ok(await complete(coordinator, recent, "m1", m1))
    await running_job(coordinator, client, "m2", m2)  # running
    await coordinator.submit(client)  # pending
    await coordinator.submit(client)  # pending
    cancelled = (await coordinator.submit(client))["job_id"]
    ok(await coordinator.http.delete(f"/v1/jobs/{cancelled}", headers=client))
    doomed = (await running_job(coordinator, client, "m2", m2))["job_id"]
    ok(await fail(coordinator, doomed, "m2", m2, retryable=False))

    stats = ok(await coordinator.http.get("/v1/admin/stats", headers=admin))
    assert stats == {
        "jobs_by_status": {
            "pending": 2,
            "running": 1,
            "completed": 2,
            "failed": 1,
            "cancelled": 1,
        },
        "total_jobs": 7,
        "queue_depth": 2,
        "running_jobs": 1,
        "online_miners": 2,
        "total_miners": 3,
        "completed_last_minute": 1,
    }

    coordinator.clock.advance(61)  # the recent completion is now 61 s old
    later = ok(await coordinator.http.get("/v1/admin/stats", headers=admin))
    assert later["completed_last_minute"] == 0
    assert later["online_miners"] == 0  # nobody heartbeated in the last 60 s
    assert later["total_miners"] == 3


async def test_admin_creates_client_keys(coordinator: Coordinator) -> None:
    created = ok(
        await coordinator.http.post(
            "/v1/admin/clients", json={"name": "acme"}, headers=coordinator.admin_headers
        ),
        201,
    )
    assert created["client_id"] and created["api_key"]
    key = {"X-Api-Key": created["api_key"]}
    job = await coordinator.submit(key)
    assert job["client_id"] == created["client_id"]
    no_body = await coordinator.http.post("/v1/admin/clients", headers=coordinator.admin_headers)
    assert no_body.status_code == 201, no_body.text
    assert no_body.json()["api_key"] != created["api_key"]


# --- error bodies ----------------------------------------------------------------------


async def test_error_bodies_have_the_contract_shape(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    http = coordinator.http
    assert_error(await http.get("/v1/nothing-here", headers=client), 404)
    assert_error(await http.put("/v1/jobs", json={}, headers=client), 405)
    assert_error(await http.get("/v1/jobs/job_x", headers=client), 404, "job_not_found")
    assert_error(await http.post("/v1/jobs", json={"prompt": 1}, headers=client), 422)
    big = {"prompt": "a" * (1_100_000)}
    assert_error(await http.post("/v1/jobs", json=big, headers=client), 413, "payload_too_large")
    miner = await coordinator.new_miner("m1")
    job_id = (await coordinator.submit(client))["job_id"]
    await claim_ok(coordinator, job_id, "m1", miner)
    assert_error(await coordinator.claim(job_id, "m1", miner), 409)


# --- API keys: own keys, admin keys, revocation --------------------------------------


def key_id_of(headers: dict[str, str]) -> str:
    """The contract's key id: the first 16 hex digits of the SHA-256 of the key."""
    return hashlib.sha256(headers["X-Api-Key"].encode()).hexdigest()[:16]


async def own_keys(coordinator: Coordinator, headers: dict[str, str]) -> list[dict[str, Any]]:
    body = ok(await coordinator.http.get("/v1/auth/keys", headers=headers))
    assert body["total"] == len(body["keys"]) and body["has_more"] is False, body
    keys: list[dict[str, Any]] = body["keys"]
    return keys


async def new_key(coordinator: Coordinator, headers: dict[str, str]) -> dict[str, str]:
    created = ok(await coordinator.http.post("/v1/auth/keys", headers=headers), 201)
    return {"X-Api-Key": created["api_key"]}


async def test_a_client_lists_creates_and_revokes_its_own_keys(coordinator: Coordinator) -> None:
    http = coordinator.http
    client_id, first = await coordinator.new_client()
    [listed] = await own_keys(coordinator, first)
    assert listed == {
        "key_id": key_id_of(first),
        "role": "client",
        "owner": client_id,
        "created_at": "2026-02-13T10:00:00Z",
        "revoked_at": None,
    }

    coordinator.clock.advance(5)
    created = ok(await http.post("/v1/auth/keys", headers=first), 201)
    second = {"X-Api-Key": created["api_key"]}
    assert created["key_id"] == key_id_of(second) != listed["key_id"]
    assert created["role"] == "client" and created["owner"] == client_id
    assert created["created_at"] == "2026-02-13T10:00:05Z" and created["revoked_at"] is None
    # The new key acts for the same account.
    job = await coordinator.submit(second)
    assert job["client_id"] == client_id
    assert (await get_job(coordinator, job["job_id"], first))["job_id"] == job["job_id"]
    listing = await own_keys(coordinator, second)
    assert [key["key_id"] for key in listing] == [key_id_of(first), key_id_of(second)]
    assert all("api_key" not in key for key in listing)  # shown once, never listed

    # Revoke the first key with the second: refused at once, the second still works.
    coordinator.clock.advance(5)
    revoked = ok(await http.delete(f"/v1/auth/keys/{key_id_of(first)}", headers=second))
    assert revoked["key_id"] == key_id_of(first)
    assert revoked["revoked_at"] == "2026-02-13T10:00:10Z"
    assert_error(await http.get("/v1/jobs", headers=first), 401, "invalid_api_key")
    assert ok(await http.get("/v1/jobs", headers=second))["total"] == 1
    listing = await own_keys(coordinator, second)
    assert [key["revoked_at"] for key in listing] == ["2026-02-13T10:00:10Z", None]
    # Revoking it again changes nothing.
    coordinator.clock.advance(5)
    again = ok(await http.delete(f"/v1/auth/keys/{key_id_of(first)}", headers=second))
    assert again["revoked_at"] == "2026-02-13T10:00:10Z"

    # The last active key is kept, so the account cannot lock itself out.
    last = await http.delete(f"/v1/auth/keys/{key_id_of(second)}", headers=second)
    assert_error(last, 409, "last_api_key")
    assert ok(await http.get("/v1/jobs", headers=second))["total"] == 1
    # With another key, the key in use may revoke itself.
    third = await new_key(coordinator, second)
    ok(await http.delete(f"/v1/auth/keys/{key_id_of(second)}", headers=second))
    assert_error(await http.get("/v1/jobs", headers=second), 401, "invalid_api_key")
    assert ok(await http.get("/v1/jobs", headers=third))["total"] == 1


async def test_keys_of_others_can_be_neither_seen_nor_revoked(coordinator: Coordinator) -> None:
    http = coordinator.http
    alice_id, alice = await coordinator.new_client()
    _bob_id, bob = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    await new_key(coordinator, bob)  # so revoking bob's first key would be allowed to bob
    assert [key["owner"] for key in await own_keys(coordinator, alice)] == [alice_id]
    assert {key["owner"] for key in await own_keys(coordinator, miner)} == {"m1"}

    for caller, victim in ((alice, bob), (miner, alice), (alice, miner), (alice, ADMIN)):
        victim_headers = coordinator.admin_headers if victim is ADMIN else victim
        response = await http.delete(f"/v1/auth/keys/{key_id_of(victim_headers)}", headers=caller)
        assert_error(response, 404, "api_key_not_found")
    # Nothing was revoked.
    assert ok(await http.get("/v1/jobs", headers=bob))["total"] == 0
    assert ok(await http.get("/v1/jobs", headers=alice))["total"] == 0
    ok(await http.post("/v1/miners/m1/heartbeat", json={"running_jobs": []}, headers=miner))
    ok(await http.get("/v1/admin/stats", headers=coordinator.admin_headers))
    # An id that names no key, and one that is not a key id at all.
    assert_error(await http.delete("/v1/auth/keys/0123456789abcdef", headers=alice), 404)
    assert_error(await http.delete("/v1/auth/keys/not-a-key-id", headers=alice), 422)
    assert_error(await http.delete(f"/v1/auth/keys/{'A' * 16}", headers=alice), 422)


ADMIN: dict[str, str] = {}  # stands for the admin key in the table above


async def test_a_miner_key_made_by_the_miner_acts_as_that_miner(coordinator: Coordinator) -> None:
    http = coordinator.http
    first = await coordinator.new_miner("m1")
    second = ok(await http.post("/v1/auth/keys", headers=first), 201)
    assert second["role"] == "miner" and second["owner"] == "m1"
    headers = {"X-Api-Key": second["api_key"]}
    ok(await http.post("/v1/miners/m1/heartbeat", json={"running_jobs": []}, headers=headers))
    ok(await http.delete(f"/v1/auth/keys/{key_id_of(first)}", headers=headers))
    beat = await http.post("/v1/miners/m1/heartbeat", json={"running_jobs": []}, headers=first)
    assert_error(beat, 401, "invalid_api_key")
    assert_error(await http.get("/v1/admin/keys", headers=headers), 403)


async def test_an_account_holds_a_bounded_number_of_keys(coordinator: Coordinator) -> None:
    from aitbc.services.auth import MAX_ACTIVE_KEYS

    _client_id, client = await coordinator.new_client()
    made = [await new_key(coordinator, client) for _ in range(MAX_ACTIVE_KEYS - 1)]
    refused = await coordinator.http.post("/v1/auth/keys", headers=client)
    assert_error(refused, 409, "too_many_api_keys")
    assert len(await own_keys(coordinator, client)) == MAX_ACTIVE_KEYS
    # A revoked key frees its place.
    ok(await coordinator.http.delete(f"/v1/auth/keys/{key_id_of(made[0])}", headers=client))
    await new_key(coordinator, client)


RACE_ROUNDS = 8


async def test_concurrent_revocations_keep_the_last_key(coordinator: Coordinator) -> None:
    # Each round races two requests that each revoke the other's key; without the
    # lock on the owner's keys PostgreSQL lets both through about every other round.
    for _round in range(RACE_ROUNDS):
        client_id, first = await coordinator.new_client()
        second = await new_key(coordinator, first)
        answers = await asyncio.gather(
            coordinator.http.delete(f"/v1/auth/keys/{key_id_of(first)}", headers=second),
            coordinator.http.delete(f"/v1/auth/keys/{key_id_of(second)}", headers=first),
        )
        # One wins; the other is refused as the last key (409), or its key is gone
        # (401) when the winner finished before it was authenticated.
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses in ([200, 401], [200, 409]), answers
        keys = await own_keys_of(coordinator, client_id)
        assert len([key for key in keys if not key["revoked_at"]]) == 1, keys


async def own_keys_of(coordinator: Coordinator, owner: str) -> list[dict[str, Any]]:
    body = ok(
        await coordinator.http.get(
            "/v1/admin/keys", params={"owner": owner}, headers=coordinator.admin_headers
        )
    )
    keys: list[dict[str, Any]] = body["keys"]
    return keys


async def test_admin_lists_and_revokes_any_key(coordinator: Coordinator) -> None:
    http = coordinator.http
    admin = coordinator.admin_headers
    coordinator.clock.advance(1)  # after the admin key, made at start-up
    alice_id, alice = await coordinator.new_client()
    coordinator.clock.advance(1)
    _bob_id, bob = await coordinator.new_client()
    coordinator.clock.advance(1)
    miner = await coordinator.new_miner("m1")
    coordinator.clock.advance(1)
    alice_second = await new_key(coordinator, alice)

    everything = ok(await http.get("/v1/admin/keys", headers=admin))
    assert [key["key_id"] for key in everything["keys"]] == [
        key_id_of(admin),
        key_id_of(alice),
        key_id_of(bob),
        key_id_of(miner),
        key_id_of(alice_second),
    ]
    assert everything["total"] == 5 and everything["has_more"] is False
    assert everything["keys"][0]["role"] == "admin" and everything["keys"][0]["owner"] is None
    of_alice = await own_keys_of(coordinator, alice_id)
    assert [key["key_id"] for key in of_alice] == [key_id_of(alice), key_id_of(alice_second)]
    miners = ok(await http.get("/v1/admin/keys", params={"role": "miner"}, headers=admin))
    assert [key["owner"] for key in miners["keys"]] == ["m1"]
    page = ok(await http.get("/v1/admin/keys", params={"limit": 2, "offset": 1}, headers=admin))
    assert [key["key_id"] for key in page["keys"]] == [key_id_of(alice), key_id_of(bob)]
    assert page["total"] == 5 and page["has_more"] is True
    # The admin's own keys are the admin keys.
    assert [key["key_id"] for key in await own_keys(coordinator, admin)] == [key_id_of(admin)]

    # An admin may revoke a client's or miner's last key: that shuts it out.
    for victim in (bob, miner):
        revoked = ok(await http.delete(f"/v1/admin/keys/{key_id_of(victim)}", headers=admin))
        assert revoked["revoked_at"] == "2026-02-13T10:00:04Z"
    assert_error(await http.get("/v1/jobs", headers=bob), 401, "invalid_api_key")
    assert_error(
        await http.get("/v1/jobs/available", params={"miner_id": "m1"}, headers=miner), 401
    )
    assert ok(await http.get("/v1/jobs", headers=alice))["total"] == 0
    assert_error(await http.delete("/v1/admin/keys/0123456789abcdef", headers=admin), 404)
    # But not the last admin key.
    last = await http.delete(f"/v1/admin/keys/{key_id_of(admin)}", headers=admin)
    assert_error(last, 409, "last_api_key")
    assert_error(await http.delete(f"/v1/auth/keys/{key_id_of(admin)}", headers=admin), 409)
    ok(await http.get("/v1/admin/stats", headers=admin))


async def test_an_admin_key_made_through_the_api_is_an_admin_key(
    coordinator: Coordinator,
) -> None:
    http = coordinator.http
    created = ok(await http.post("/v1/auth/keys", headers=coordinator.admin_headers), 201)
    assert created["role"] == "admin" and created["owner"] is None
    second = {"X-Api-Key": created["api_key"]}
    ok(await http.get("/v1/admin/stats", headers=second))
    # Now the configured one may go (until a restart configured with it: see the
    # restart tests), and the new one is the last.
    configured = coordinator.admin_headers
    ok(await http.delete(f"/v1/auth/keys/{key_id_of(configured)}", headers=second))
    assert_error(await http.get("/v1/admin/stats", headers=configured), 401, "invalid_api_key")
    assert_error(await http.delete(f"/v1/admin/keys/{key_id_of(second)}", headers=second), 409)
