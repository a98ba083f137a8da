"""Uploaded files (``/v1/files``): upload, list, metadata, delete, per-client quota,
expiry and the sweeper, hostile multipart text, and jobs whose ``input`` is a file."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from aitbc.errors import NotFound, ValidationFailed
from aitbc.services import files
from aitbc.settings import Settings
from tests.conftest import Coordinator
from tests.integration.helpers import assert_error, ok, sweep

MAX_UPLOAD_BYTES = 64
MAX_FILES = 4
MAX_FILE_BYTES = 150
TTL_SECONDS = 3600


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "max_files_per_client": MAX_FILES,
        "max_file_bytes_per_client": MAX_FILE_BYTES,
        "file_ttl_seconds": TTL_SECONDS,
    }


@pytest.fixture
async def lenient_http(coordinator: Coordinator) -> AsyncIterator[httpx.AsyncClient]:
    """A client that returns a 500 instead of raising, so a failure reads as the status."""
    transport = httpx.ASGITransport(app=coordinator.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


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


async def raw_upload(
    http: httpx.AsyncClient, headers: dict[str, str], disposition: bytes, content_type: bytes
) -> httpx.Response:
    """A multipart body written byte by byte (httpx would escape control characters)."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; '
        + disposition
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\n\r\nhello\r\n--B--\r\n"
    )
    return await http.post(
        "/v1/files",
        content=body,
        headers={**headers, "Content-Type": "multipart/form-data; boundary=B"},
    )


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_upload_then_submit_with_the_file_id(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    text = "Translate to French: the cat sleeps."
    info = ok(await upload(coordinator, client, text.encode()), 201)
    assert re.fullmatch(r"file_[0-9a-f]{32}", info["file_id"]), info
    assert info["filename"] == "prompt.txt"
    assert info["content_type"] == "text/plain"
    assert info["size"] == len(text.encode())
    assert info["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert info["created_at"] == iso(coordinator.clock.now)
    assert info["expires_at"] == iso(coordinator.clock.now + timedelta(seconds=TTL_SECONDS))

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


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 1000, "max_prompt_chars": 10}])
async def test_uploads_are_bounded_by_what_a_prompt_can_hold(coordinator: Coordinator) -> None:
    """A file is only usable as a prompt: no more bytes than max_prompt_chars characters
    can take in UTF-8 (4 each), and no more characters than max_prompt_chars."""
    settings = coordinator.runtime.settings
    assert files.upload_limit(settings) == 4 * settings.max_prompt_chars
    _client_id, client = await coordinator.new_client()
    widest = "\U0001f600" * settings.max_prompt_chars  # 4 UTF-8 bytes each
    info = ok(await upload(coordinator, client, widest.encode()), 201)
    assert info["size"] == files.upload_limit(settings)
    job = ok(
        await coordinator.http.post("/v1/jobs", json={"input": info["file_id"]}, headers=client),
        201,
    )
    assert job["prompt"] == widest
    over_bytes = await upload(coordinator, client, widest.encode() + b"a")
    assert_error(over_bytes, 413, "file_too_large")
    over_chars = await upload(coordinator, client, b"a" * (settings.max_prompt_chars + 1))
    assert_error(over_chars, 413, "file_too_large")


def test_the_default_upload_limit_fits_the_default_prompt_limit() -> None:
    settings = Settings()
    assert settings.max_upload_bytes == files.upload_limit(settings)
    assert settings.max_upload_bytes == 4 * settings.max_prompt_chars


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
    # Never usable as a prompt, so never stored.
    for data in (b"\xff\xfe\x00\x81", b"text with a \x00 inside"):
        assert_error(
            await upload(coordinator, client, data, "blob.bin", "x/y"), 400, "file_not_text"
        )
    assert ok(await coordinator.http.get("/v1/files", headers=client))["total"] == 0
    wrong_field = await coordinator.http.post(
        "/v1/files", files={"upload": ("a.txt", b"hi", "text/plain")}, headers=client
    )
    assert_error(wrong_field, 422, "validation_error")


async def test_only_clients_upload(coordinator: Coordinator) -> None:
    miner = await coordinator.new_miner("m1")
    assert_error(await upload(coordinator, miner, b"hi"), 403)
    assert_error(await upload(coordinator, {}, b"hi"), 401, "missing_api_key")


async def test_multipart_text_with_nul_or_control_characters_is_422(
    coordinator: Coordinator, lenient_http: httpx.AsyncClient
) -> None:
    """PostgreSQL cannot store NUL (a 500 there), SQLite stored it: both refuse it."""
    _client_id, client = await coordinator.new_client()
    bad_filenames = (b'filename="a\x00b.txt"', b'filename="a\x01b"', b'filename="a\x7fb"')
    for disposition in bad_filenames:
        response = await raw_upload(lenient_http, client, disposition, b"text/plain")
        assert_error(response, 422, "invalid_filename")
    long_name = b'filename="' + b"n" * (files.MAX_FILENAME_CHARS + 1) + b'"'
    assert_error(await raw_upload(lenient_http, client, long_name, b"text/plain"), 422)
    for content_type in (b"text/pl\x00ain", b"text/plain; charset=\x00", b"text\x01/plain", b"x"):
        response = await raw_upload(lenient_http, client, b'filename="a.txt"', content_type)
        assert_error(response, 422, "invalid_content_type")
    long_type = b"text/" + b"p" * files.MAX_CONTENT_TYPE_CHARS
    assert_error(await raw_upload(lenient_http, client, b'filename="a.txt"', long_type), 422)
    assert ok(await coordinator.http.get("/v1/files", headers=client))["total"] == 0
    # What is allowed still is: the longest name, non-ASCII text, parameters.
    name = "é" * (files.MAX_FILENAME_CHARS - 4) + ".txt"
    good = await raw_upload(
        lenient_http,
        client,
        b'filename="' + name.encode() + b'"',
        b"text/plain ; charset=utf-8",
    )
    info = ok(good, 201)
    assert (info["filename"], info["content_type"]) == (name, "text/plain ; charset=utf-8")


def test_file_names_with_lone_surrogates_are_refused() -> None:
    for name in ("a\ud800b", "\udfff", "tab\there", "line\nbreak", "c1\x85"):
        with pytest.raises(ValidationFailed) as refused:
            files.clean_filename(name)
        assert refused.value.error_code == "invalid_filename"
    assert files.clean_filename("") == files.DEFAULT_FILENAME
    assert files.clean_content_type(None) == files.DEFAULT_CONTENT_TYPE


async def test_metadata_list_and_delete_are_for_the_owner(coordinator: Coordinator) -> None:
    _alice_id, alice = await coordinator.new_client()
    _bob_id, bob = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    first = ok(await upload(coordinator, alice, b"first prompt", "one.txt"), 201)
    coordinator.clock.advance(1)
    second = ok(await upload(coordinator, alice, b"second prompt", "two.txt"), 201)
    assert ok(await coordinator.http.get(f"/v1/files/{first['file_id']}", headers=alice)) == first

    listing = ok(await coordinator.http.get("/v1/files", headers=alice))
    assert listing == {"files": [second, first], "total": 2, "has_more": False}
    page = ok(await coordinator.http.get("/v1/files", params={"limit": 1}, headers=alice))
    assert page == {"files": [second], "total": 2, "has_more": True}
    assert ok(await coordinator.http.get("/v1/files", headers=bob)) == {
        "files": [],
        "total": 0,
        "has_more": False,
    }

    path = f"/v1/files/{first['file_id']}"
    assert_error(await coordinator.http.get(path, headers=bob), 404, "file_not_found")
    assert_error(await coordinator.http.delete(path, headers=bob), 404, "file_not_found")
    assert_error(await coordinator.http.get(path, headers=miner), 403)
    assert_error(await coordinator.http.delete(path, headers=miner), 403)
    assert_error(await coordinator.http.get(path), 401, "missing_api_key")
    assert_error(await coordinator.http.get("/v1/files/file_x%00y", headers=alice), 422)
    unknown = f"/v1/files/file_{'0' * 32}"
    assert_error(await coordinator.http.get(unknown, headers=alice), 404, "file_not_found")

    # A job made from the file keeps its prompt when the file goes.
    job = ok(
        await coordinator.http.post("/v1/jobs", json={"input": first["file_id"]}, headers=alice),
        201,
    )
    deleted = await coordinator.http.delete(path, headers=alice)
    assert deleted.status_code == 204 and deleted.content == b"", deleted.text
    assert_error(await coordinator.http.get(path, headers=alice), 404, "file_not_found")
    assert_error(await coordinator.http.delete(path, headers=alice), 404, "file_not_found")
    reused = await coordinator.http.post(
        "/v1/jobs", json={"input": first["file_id"]}, headers=alice
    )
    assert_error(reused, 404, "file_not_found")
    kept = ok(await coordinator.http.get(f"/v1/jobs/{job['job_id']}", headers=alice))
    assert (kept["prompt"], kept["input_file_id"]) == ("first prompt", first["file_id"])
    assert ok(await coordinator.http.get("/v1/files", headers=alice))["files"] == [second]


async def test_the_file_count_quota(coordinator: Coordinator) -> None:
    _alice_id, alice = await coordinator.new_client()
    _bob_id, bob = await coordinator.new_client()
    held = [ok(await upload(coordinator, alice, b"x"), 201) for _ in range(MAX_FILES)]
    over = assert_error(await upload(coordinator, alice, b"x"), 409, "file_quota_exceeded")
    assert str(MAX_FILES) in over["detail"], over
    ok(await upload(coordinator, bob, b"x"), 201)  # a quota per client
    deleted = await coordinator.http.delete(f"/v1/files/{held[0]['file_id']}", headers=alice)
    assert deleted.status_code == 204
    ok(await upload(coordinator, alice, b"x"), 201)
    assert_error(await upload(coordinator, alice, b"x"), 409, "file_quota_exceeded")


async def test_the_file_bytes_quota(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    ok(await upload(coordinator, client, b"a" * MAX_UPLOAD_BYTES), 201)
    ok(await upload(coordinator, client, b"b" * MAX_UPLOAD_BYTES), 201)
    room = MAX_FILE_BYTES - 2 * MAX_UPLOAD_BYTES
    over = assert_error(await upload(coordinator, client, b"c" * (room + 1)), 409)
    assert over["error_code"] == "file_quota_exceeded" and str(MAX_FILE_BYTES) in over["detail"]
    ok(await upload(coordinator, client, b"c" * room), 201)  # exactly full
    assert_error(await upload(coordinator, client, b"d"), 409, "file_quota_exceeded")


async def test_concurrent_uploads_do_not_overrun_the_quota(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    responses = await asyncio.gather(
        *(upload(coordinator, client, f"prompt {n}".encode()) for n in range(3 * MAX_FILES))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * MAX_FILES + [409] * (2 * MAX_FILES), statuses
    assert ok(await coordinator.http.get("/v1/files", headers=client))["total"] == MAX_FILES


async def test_expired_files_are_gone_and_swept_in_batches(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    old = ok(await upload(coordinator, client, b"old prompt"), 201)
    job = ok(
        await coordinator.http.post("/v1/jobs", json={"input": old["file_id"]}, headers=client), 201
    )
    coordinator.clock.advance(TTL_SECONDS - 1)
    fresh = ok(await upload(coordinator, client, b"fresh prompt"), 201)
    coordinator.clock.advance(1)  # the old file's expires_at: expired from now on

    path = f"/v1/files/{old['file_id']}"
    assert_error(await coordinator.http.get(path, headers=client), 404, "file_not_found")
    assert_error(await coordinator.http.delete(path, headers=client), 404, "file_not_found")
    assert ok(await coordinator.http.get("/v1/files", headers=client))["files"] == [fresh]
    with pytest.raises(NotFound):
        await files.prompt_of(coordinator.runtime, _client_id, old["file_id"])
    assert (
        await files.prompt_of(coordinator.runtime, _client_id, fresh["file_id"]) == "fresh prompt"
    )
    # Expired files no longer count against the quota.
    for _ in range(MAX_FILES - 1):
        ok(await upload(coordinator, client, b"x"), 201)

    assert (await sweep(coordinator))["files_expired"] == 1
    assert (await sweep(coordinator))["files_expired"] == 0
    kept = ok(await coordinator.http.get(f"/v1/jobs/{job['job_id']}", headers=client))
    assert kept["prompt"] == "old prompt"

    # A backlog larger than one sweep's batch takes several sweeps.
    backlog = files.FILE_SWEEP_BATCH + 3
    for _ in range(backlog // MAX_FILES + 1):
        coordinator.clock.advance(TTL_SECONDS)
        _other_id, other = await coordinator.new_client()
        for _ in range(MAX_FILES):
            ok(await upload(coordinator, other, b"y"), 201)
    coordinator.clock.advance(TTL_SECONDS)
    expired = (backlog // MAX_FILES + 1) * MAX_FILES + MAX_FILES  # plus the client's 4
    swept = [(await sweep(coordinator))["files_expired"] for _ in range(3)]
    assert swept[0] == files.FILE_SWEEP_BATCH, swept
    assert sum(swept) == expired, swept
    assert ok(await coordinator.http.get("/v1/files", headers=client))["total"] == 0


async def test_an_expired_file_cannot_be_a_jobs_input(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    info = ok(await upload(coordinator, client, b"soon gone"), 201)
    coordinator.clock.advance(TTL_SECONDS)
    response = await coordinator.http.post(
        "/v1/jobs", json={"input": info["file_id"]}, headers=client
    )
    assert_error(response, 404, "file_not_found")
