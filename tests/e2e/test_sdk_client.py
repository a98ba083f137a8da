"""``aitbc.Client`` (synchronous) against a real ``aitbc serve`` and ``aitbc miner`` on
the bundled model: submit, wait with progress, stream the text, verify the receipt."""

from __future__ import annotations

import aitbc
from aitbc.domain.jobs import JobStatus
from aitbc.sdk import KeyRing
from tests.e2e import test_miner_daemon as daemon_tests
from tests.e2e.test_miner_daemon import MODEL, Market

market = daemon_tests.market  # the fixture: a coordinator process and a client account


def test_the_sync_client_runs_a_job_end_to_end(market: Market) -> None:
    market.start_miner(miner_id="e2e-sdk")
    with aitbc.Client(
        market.coordinator.base_url, api_key=market.client_headers["X-Api-Key"]
    ) as client:
        assert [model["id"] for model in client.models.list()] == [MODEL]
        keys: KeyRing = client.receipts.keys()  # pinned before the job
        job = client.jobs.submit("Name three fruits.", model=MODEL, max_tokens=24, seed=5)
        streamed = "".join(client.jobs.stream(job.job_id))
        statuses: list[str] = []
        done = client.jobs.wait(
            job.job_id, timeout_seconds=60, on_progress=lambda j: statuses.append(j.status.value)
        )
        assert done.status is JobStatus.COMPLETED
        assert streamed == done.result and streamed.strip()
        assert statuses[-1] == "completed"
        receipt = client.jobs.receipt(job.job_id)
        verified = client.receipts.verify(receipt, keys, result=done.result)
        assert verified.receipt["job_id"] == job.job_id
        me = client.accounts.me()
        assert me.held == 0 and me.balance < 100  # the grant, less what the job cost
        assert [j.job_id for j in client.jobs.iter()] == [job.job_id]
