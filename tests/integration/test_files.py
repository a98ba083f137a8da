"""File upload (``POST /v1/files``) and jobs whose ``input`` is an uploaded file."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from tests.conftest import Coordinator
from tests.integration.helpers import assert_error, ok

MAX_UPLOAD_BYTES = 64


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_upload_bytes": MAX_UPLOAD_BYTES}


async def upload(
    coordinator: Coordinator,
    headers: dict[str, str],
    data: bytes,
    filename: str = "prompt.txt",
    content_type: str = "text/plain",
) -> Any:
    return await coordinator.http.post(
        "/v1/files", files={"file": (filename, data, content_type)}, headers=headers
    )


async def test_upload_then_submit_with_the_file_id(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    text = "Translate to French: the cat sleeps."
    info = ok(await upload(coordinator, client, text.encode()), 201)
    assert re.fullmatch(r"file_[0-9a-f]{32}", info["file_id"]), info
    assert info["filename"] == "prompt.txt"
    assert info["content_type"] == "text/plain"
    assert info["size"] == len(text.encode())
    assert info["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert info["created_at"] == "2026-02-13T10:00:00Z"

    job = ok(
        await coordinator.http.post(
            "/v1/jobs", json={"input": info["file_id"], "model": "smollm2-135m"}, headers=client
        ),
        201,
    )
    assert job["prompt"] == text
    assert job["input_file_id"] == info["file_id"]
    fetched = ok(await coordinator.http.get(f"/v1/jobs/{job['job_id']}", headers=client))
    assert fetched["prompt"] == text


async def test_a_file_id_given_as_prompt_is_plain_text(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    info = ok(await upload(coordinator, client, b"secret"), 201)
    job = await coordinator.submit(client, prompt=info["file_id"])
    assert job["prompt"] == info["file_id"]
    assert job["input_file_id"] is None


async def test_upload_at_the_limit_passes_and_over_it_is_413(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    ok(await upload(coordinator, client, b"a" * MAX_UPLOAD_BYTES), 201)
    assert_error(await upload(coordinator, client, b"a" * (MAX_UPLOAD_BYTES + 1)), 413)
    # Far over the limit: refused from the declared length, before the body is read.
    huge = await upload(coordinator, client, b"a" * (200 * 1024))
    assert_error(huge, 413, "payload_too_large")


async def test_another_clients_file_is_not_found(coordinator: Coordinator) -> None:
    _alice_id, alice = await coordinator.new_client()
    _bob_id, bob = await coordinator.new_client()
    info = ok(await upload(coordinator, alice, b"alice's private prompt"), 201)
    response = await coordinator.http.post("/v1/jobs", json={"input": info["file_id"]}, headers=bob)
    assert_error(response, 404, "file_not_found")
    unknown = await coordinator.http.post(
        "/v1/jobs", json={"input": "file_" + "0" * 32}, headers=alice
    )
    assert_error(unknown, 404, "file_not_found")
    assert ok(await coordinator.http.get("/v1/jobs", headers=bob))["total"] == 0


async def test_bad_uploads(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    assert_error(await upload(coordinator, client, b""), 400, "empty_file")
    binary = ok(await upload(coordinator, client, b"\xff\xfe\x00\x81", "blob.bin", "x/y"), 201)
    response = await coordinator.http.post(
        "/v1/jobs", json={"input": binary["file_id"]}, headers=client
    )
    assert_error(response, 400, "file_not_text")
    wrong_field = await coordinator.http.post(
        "/v1/files", files={"upload": ("a.txt", b"hi", "text/plain")}, headers=client
    )
    assert_error(wrong_field, 422, "validation_error")


async def test_only_clients_upload(coordinator: Coordinator) -> None:
    miner = await coordinator.new_miner("m1")
    assert_error(await upload(coordinator, miner, b"hi"), 403)
    assert_error(await upload(coordinator, {}, b"hi"), 401, "missing_api_key")
