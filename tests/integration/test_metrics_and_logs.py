"""``GET /metrics`` (who may scrape, and counts that match what happened) and the
logs (one line per request and per job transition, with ids, request id included;
never an API key, a prompt or a result), on both databases."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aitbc import logs
from aitbc.services import ledger
from tests.conftest import Coordinator
from tests.integration.helpers import assert_error, claim_ok, complete, ok, progress

MINER = "miner-metrics"
PROMPT = "a secret prompt nobody may log"
RESULT = "a private result nobody may log"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Rate limits low enough for a test to meet one.
    return {"rate_limit": "20/minute"}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def _scrape(coordinator: Coordinator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await coordinator.http.get("/metrics", headers=coordinator.admin_headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return _samples(response.text)


async def _one_job(coordinator: Coordinator) -> tuple[str, dict[str, str], dict[str, str]]:
    miner = await coordinator.new_miner(MINER)
    _client_id, client = await coordinator.new_client()
    job = await coordinator.submit(client, prompt=PROMPT)
    await claim_ok(coordinator, job["job_id"], MINER, miner)
    await progress(coordinator, job["job_id"], MINER, miner, 50)
    ok(await complete(coordinator, job["job_id"], MINER, miner, result=RESULT))
    return job["job_id"], client, miner


async def test_metrics_are_for_the_admin_key_or_an_allowed_scraper(
    coordinator: Coordinator,
) -> None:
    assert_error(await coordinator.http.get("/metrics"), 401, "missing_api_key")
    _client_id, client = await coordinator.new_client()
    assert_error(await coordinator.http.get("/metrics", headers=client), 403, "admin_only")
    assert (await coordinator.http.get("/metrics", headers=coordinator.admin_headers)).is_success
    coordinator.runtime.settings.metrics_allow_ips = "10.0.0.0/8, 127.0.0.1"
    assert (await coordinator.http.get("/metrics")).is_success


async def test_metrics_count_what_happened(coordinator: Coordinator) -> None:
    before = await _scrape(coordinator)
    await _one_job(coordinator)
    assert await ledger.seal_once(coordinator.runtime) is not None
    after = await _scrape(coordinator)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("aitbc_http_requests_total", method="POST", route="/v1/jobs", status="201") == 1
    assert (
        grew(
            "aitbc_http_requests_total",
            method="POST",
            route="/v1/jobs/{job_id}/complete",
            status="200",
        )
        == 1
    )
    assert grew("aitbc_http_request_duration_seconds_count", method="POST", route="/v1/jobs") == 1
    assert after[("aitbc_jobs", (("status", "completed"),))] == 1
    assert after[("aitbc_jobs", (("status", "pending"),))] == 0
    assert after[("aitbc_queue_depth", ())] == 0
    assert after[("aitbc_miners_online", ())] == 1
    assert grew("aitbc_receipts_issued_total") == 1
    assert grew("aitbc_tokens_generated_total", model="smollm2-135m") == 2
    assert grew("aitbc_dispatch_latency_seconds_count") == 1
    assert grew("aitbc_blocks_sealed_total") == 1
    assert after[("aitbc_websocket_connections", ())] == 0


async def test_rate_limit_rejections_are_counted(coordinator: Coordinator) -> None:
    before = await _scrape(coordinator)
    # Requests without a key are counted per address: 20 a minute here.
    responses = [await coordinator.http.get("/v1/jobs") for _ in range(25)]
    refused = sum(response.status_code == 429 for response in responses)
    assert refused >= 1
    after = await _scrape(coordinator)
    key = ("aitbc_rate_limit_rejections_total", (("caller", "ip"),))
    assert after.get(key, 0) - before.get(key, 0) == refused


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged at DEBUG, formatted as ``AITBC_LOG_FORMAT=json`` writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs._RequestIdFilter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


async def test_one_log_line_per_request_and_per_job_transition_never_a_secret(
    coordinator: Coordinator, json_log: io.StringIO
) -> None:
    job_id, client, miner = await _one_job(coordinator)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    requests = [line for line in lines if line["logger"] == "aitbc.http"]
    assert {"method", "route", "status", "duration_ms", "request_id"} <= set(requests[-1])
    submits = [line for line in requests if line["route"] == "/v1/jobs"]
    assert len(submits) == 1 and submits[0]["status"] == 201
    transitions = [line for line in lines if line["logger"] == "aitbc.jobs"]
    assert [line["event"] for line in transitions] == [
        "job.pending",
        "job.running",
        "job.progress",
        "job.completed",
    ]
    assert {line["job_id"] for line in transitions} == {job_id}
    assert transitions[1]["miner_id"] == MINER
    # Each transition line carries the id of the request that made it.
    for transition in transitions:
        assert transition["request_id"] in {line["request_id"] for line in requests}
    # Registrations are logged with their ids.
    assert any(
        line["logger"] == "aitbc.services.miners" and line.get("miner_id") == MINER
        for line in lines
    )
    assert any(line["logger"] == "aitbc.services.auth" and "client_id" in line for line in lines)
    text = json_log.getvalue()
    for secret in (client["X-Api-Key"], miner["X-Api-Key"], PROMPT, RESULT, "test-admin-key"):
        assert secret not in text


async def test_a_request_id_is_kept_or_made_and_sent_back(coordinator: Coordinator) -> None:
    given = await coordinator.http.get("/health", headers={"X-Request-Id": "trace-123"})
    assert given.headers["x-request-id"] == "trace-123"
    made = await coordinator.http.get("/health", headers={"X-Request-Id": "bad id\x7f" * 20})
    assert made.headers["x-request-id"] != "trace-123"
    assert len(made.headers["x-request-id"]) == 16


def test_text_lines_show_the_fields() -> None:
    record = logging.LogRecord("aitbc.jobs", logging.INFO, "", 0, "job %s", ("j1",), None)
    record.job_id = "j1"
    record.request_id = "r1"
    line = logs.TextFormatter().format(record)
    assert line.endswith("INFO aitbc.jobs: job j1 [job_id=j1 request_id=r1]")
