"""``aitbc.Client`` and ``aitbc.AsyncClient``: the coordinator's API from Python, on
httpx, with typed results (the contract's own schemas, ``aitbc.schemas``).

Every call is described once, as a :class:`Call` (method, path, body, how to read
the answer), and sent by either client: the synchronous one with ``httpx.Client``,
the asynchronous one with ``httpx.AsyncClient``. Both retry a call that met 429 or
503 (up to ``max_retries`` times, waiting what ``Retry-After`` says, or a jittered
exponential backoff when it says nothing), and a read that could not connect; they
never re-send a write whose fate is unknown. Errors are :mod:`aitbc.sdk.errors`.

The URL and key come from the arguments, else ``AITBC_URL`` / ``AITBC_API_KEY``,
else the config file ``aitbc login`` writes (:func:`aitbc.sdk.config.load_config`).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import httpx

from aitbc.domain.jobs import JobStatus
from aitbc.domain.receipts import VerifiedReceipt
from aitbc.domain.signing import KeyRing
from aitbc.schemas import (
    AccountBalance,
    AccountPublic,
    AdminStats,
    Job,
    JobList,
    Miner,
)
from aitbc.sdk.calls import Call, T, json_body, model_parser
from aitbc.sdk.config import resolve
from aitbc.sdk.errors import (
    APIConnectionError,
    APITimeoutError,
    RateLimited,
    ServiceUnavailable,
    error_from,
)
from aitbc.sdk.events import Event, event_stream
from aitbc.sdk.exchange import AsyncExchange, Exchange
from aitbc.sdk.marketplace import AsyncMarket, Market
from aitbc.sdk.receipts import verify_receipt

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_RETRIES = 2
MAX_RETRY_WAIT_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 0.5
TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of ``GET /v1/jobs/{id}/stream``: ``token`` (``data["text"]``),
    ``reset`` or ``end`` (status, usage, receipt id, price)."""

    name: str
    id: str
    data: dict[str, Any] = field(default_factory=dict)


def _amount(value: float | Decimal | str) -> float | str:
    """An AIT amount for a request body (a Decimal or text keeps its 6 decimals)."""
    return str(value) if isinstance(value, Decimal) else value


# --- the calls --------------------------------------------------------------------


def submit_call(prompt: str, **options: Any) -> Call[Job]:
    """``POST /v1/jobs``: ``options`` are the JobRequest's members (``model``,
    ``max_price``, ``priority``, ``timeout_seconds``, ``requirements``) and its
    ``params`` (``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, ``mode``)."""
    param_names = {"max_tokens", "temperature", "top_p", "stop", "seed", "mode"}
    params = {k: v for k, v in options.items() if k in param_names and v is not None}
    body: dict[str, Any] = {
        k: v for k, v in options.items() if k not in param_names and v is not None
    }
    if "max_price" in body:
        body["max_price"] = _amount(body["max_price"])
    body["prompt"] = prompt
    if params:
        body["params"] = params
    return Call("POST", "/v1/jobs", model_parser(Job), body=body)


def job_call(job_id: str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{job_id}", model_parser(Job), idempotent=True)


def list_call(status: str | None, limit: int, offset: int) -> Call[JobList]:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status is not None:
        params["status"] = status
    return Call("GET", "/v1/jobs", model_parser(JobList), params=params, idempotent=True)


def history_call(start: date, end: date, limit: int, offset: int) -> Call[JobList]:
    params = {"from": start.isoformat(), "to": end.isoformat(), "limit": limit, "offset": offset}
    return Call("GET", "/v1/jobs/history", model_parser(JobList), params=params, idempotent=True)


def cancel_call(job_id: str) -> Call[Job]:
    return Call("POST", f"/v1/jobs/{job_id}/cancel", model_parser(Job))


def download_call(job_id: str) -> Call[str]:
    return Call("GET", f"/v1/jobs/{job_id}/download", lambda r: r.text, idempotent=True)


def receipt_call(path: str) -> Call[dict[str, Any]]:
    return Call("GET", path, json_body, idempotent=True)


def receipts_call(client: str | None, provider: str | None, limit: int) -> Call[list[Any]]:
    params = {k: v for k, v in {"client": client, "provider": provider}.items() if v}
    return Call(
        "GET", "/v1/receipts", json_body, params={**params, "limit": limit}, idempotent=True
    )


def keys_call() -> Call[dict[str, Any]]:
    return Call("GET", "/v1/keys", json_body, idempotent=True)


def me_call() -> Call[AccountBalance]:
    return Call("GET", "/v1/accounts/me", model_parser(AccountBalance), idempotent=True)


def account_call(address: str) -> Call[AccountPublic]:
    return Call("GET", f"/v1/accounts/{address}", model_parser(AccountPublic), idempotent=True)


def transfer_call(
    to: str, amount: float | Decimal | str, nonce: int, signature: Mapping[str, str] | None
) -> Call[dict[str, Any]]:
    body: dict[str, Any] = {"to": to, "amount": _amount(amount), "nonce": nonce}
    if signature is not None:
        body["signature"] = dict(signature)
    return Call("POST", "/v1/transfers", json_body, body=body)


def models_call() -> Call[list[dict[str, Any]]]:
    return Call("GET", "/v1/models", lambda r: list(r.json()["data"]), idempotent=True)


def admin_miners_call() -> Call[list[Miner]]:
    return Call(
        "GET",
        "/v1/admin/miners",
        lambda r: [Miner.model_validate(item) for item in r.json()],
        idempotent=True,
    )


def admin_stats_call() -> Call[AdminStats]:
    return Call("GET", "/v1/admin/stats", model_parser(AdminStats), idempotent=True)


def mint_call(address: str, amount: float | Decimal | str) -> Call[dict[str, Any]]:
    body = {"address": address, "amount": _amount(amount)}
    return Call("POST", "/v1/admin/mint", json_body, body=body)


def register_miner_call(registration: Mapping[str, Any]) -> Call[dict[str, Any]]:
    return Call("POST", "/v1/miners/register", json_body, body=dict(registration))


def heartbeat_call(miner_id: str, running_jobs: list[str]) -> Call[dict[str, Any]]:
    body = {"running_jobs": running_jobs}
    return Call("POST", f"/v1/miners/{miner_id}/heartbeat", json_body, body=body)


def poll_call(miner_id: str, wait_seconds: float) -> Call[Job | None]:
    def parse(response: httpx.Response) -> Job | None:
        document = response.json()
        return None if document is None else Job.model_validate(document)

    params = {"miner_id": miner_id, "wait": wait_seconds}
    return Call("GET", "/v1/jobs/available", parse, params=params, idempotent=True)


def claim_call(job_id: str, miner_id: str) -> Call[Job]:
    return Call("POST", f"/v1/jobs/{job_id}/claim", model_parser(Job), body={"miner_id": miner_id})


def complete_call(job_id: str, completion: Mapping[str, Any]) -> Call[dict[str, Any]]:
    return Call("POST", f"/v1/jobs/{job_id}/complete", json_body, body=dict(completion))


def fail_call(job_id: str, miner_id: str, error: str, retryable: bool) -> Call[Job]:
    body = {"miner_id": miner_id, "error": error, "retryable": retryable}
    return Call("POST", f"/v1/jobs/{job_id}/fail", model_parser(Job), body=body)


# --- sending ----------------------------------------------------------------------


class _Base:
    """Settings both clients share, and the retry rule."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
    ) -> None:
        self.base_url, self.api_key = resolve(base_url, api_key)
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self._rng = random.Random()  # noqa: S311 (jitter, not secrets)

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": "aitbc-sdk"}
        if self.api_key:
            headers["X-Api-Key"] = self.api_key
        return headers

    def _retry_wait(self, attempt: int, error: Exception, idempotent: bool) -> float | None:
        """Seconds to wait before sending a call again after ``error`` (``idempotent``:
        safe to re-send when the connection failed), or None to give up."""
        if attempt >= self.max_retries:
            return None
        if isinstance(error, RateLimited | ServiceUnavailable):
            if error.retry_after is not None:
                return min(error.retry_after, MAX_RETRY_WAIT_SECONDS)
        elif not (isinstance(error, APIConnectionError) and idempotent):
            return None
        return self._rng.uniform(0, BACKOFF_BASE_SECONDS * 2**attempt)

    @staticmethod
    def _read(call: Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_from(response)
        return call.parse(response)

    @staticmethod
    def _transport_error(exc: httpx.TransportError) -> APIConnectionError:
        kind = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
        return kind(f"could not reach the coordinator: {exc!r}", error_code="connection_error")


class _SseParser:
    """Server-Sent Events, a line at a time (a blank line ends an event)."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}

    def feed(self, line: str) -> StreamEvent | None:
        """The event ``line`` completes, if any."""
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(":")
                self._fields[name] = value[1:] if value.startswith(" ") else value
            return None
        fields, self._fields = self._fields, {}
        if "data" not in fields:
            return None
        data = json.loads(fields["data"])
        return StreamEvent(fields.get("event", "message"), fields.get("id", ""), data)


def _stream_request(job_id: str, last_event_id: str | None) -> tuple[str, dict[str, str]]:
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    return f"/v1/jobs/{job_id}/stream", headers


def _progress_key(job: Job) -> tuple[str, int, str | None]:
    return job.status.value, job.progress, job.miner_id


class Client(_Base):
    """The coordinator's API, synchronously.

    >>> with aitbc.Client("http://127.0.0.1:8001", api_key="...") as client:
    ...     job = client.jobs.submit("Say hello", model="smollm2-135m")
    ...     print(client.jobs.wait(job.job_id).result)
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries)
        self._http = http_client or httpx.Client(timeout=timeout)
        self._owns_http = http_client is None
        self.jobs = Jobs(self)
        self.receipts = Receipts(self)
        self.accounts = Accounts(self)
        self.models = Models(self)
        self.miners = Miners(self)
        self.admin = Admin(self)
        self.exchange = Exchange(self)
        self.market = Market(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (when the client made its own httpx client)."""
        if self._owns_http:
            self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send ``call``, retrying as the module docstring says."""
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method,
                    self.base_url + call.path,
                    params=call.params,
                    json=call.body,
                    headers=self._headers(),
                )
                return self._read(call, response)
            except httpx.TransportError as exc:
                error: Exception = self._transport_error(exc)
            except (RateLimited, ServiceUnavailable) as exc:
                error = exc
            wait = self._retry_wait(attempt, error, call.idempotent)
            if wait is None:
                raise error
            time.sleep(wait)
            attempt += 1

    def stream_events(self, job_id: str, last_event_id: str | None = None) -> Iterator[StreamEvent]:
        """A job's stream events until ``end``, reconnecting (with ``Last-Event-ID``)
        when the connection breaks."""
        attempt = 0
        while True:
            path, headers = _stream_request(job_id, last_event_id)
            parser = _SseParser()
            try:
                with self._http.stream(
                    "GET",
                    self.base_url + path,
                    headers={**self._headers(), **headers},
                    timeout=httpx.Timeout(self.timeout, read=None),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise error_from(response)
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        last_event_id, attempt = event.id, 0
                        yield event
                        if event.name == "end":
                            return
            except httpx.TransportError as exc:
                wait = self._retry_wait(attempt, self._transport_error(exc), idempotent=True)
                if wait is None:
                    raise self._transport_error(exc) from exc
                time.sleep(wait)
                attempt += 1


class AsyncClient(_Base):
    """The coordinator's API, asynchronously (the same resources, awaited).

    >>> async with aitbc.AsyncClient(api_key="...") as client:
    ...     job = await client.jobs.submit("Say hello")
    ...     async for text in client.jobs.stream(job.job_id):
    ...         print(text, end="")
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries)
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._owns_http = http_client is None
        self.jobs = AsyncJobs(self)
        self.receipts = AsyncReceipts(self)
        self.accounts = AsyncAccounts(self)
        self.models = AsyncModels(self)
        self.miners = AsyncMiners(self)
        self.admin = AsyncAdmin(self)
        self.exchange = AsyncExchange(self)
        self.market = AsyncMarket(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections (when the client made its own httpx client)."""
        if self._owns_http:
            await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send ``call``, retrying as the module docstring says."""
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method,
                    self.base_url + call.path,
                    params=call.params,
                    json=call.body,
                    headers=self._headers(),
                )
                return self._read(call, response)
            except httpx.TransportError as exc:
                error: Exception = self._transport_error(exc)
            except (RateLimited, ServiceUnavailable) as exc:
                error = exc
            wait = self._retry_wait(attempt, error, call.idempotent)
            if wait is None:
                raise error
            await asyncio.sleep(wait)
            attempt += 1

    def events(
        self, *channels: str, since: Mapping[str, int] | None = None, reconnect: bool = True
    ) -> AsyncIterator[Event]:
        """Live events of ``channels`` (``job_updates``, ``miner_heartbeats``,
        ``blocks``, ``receipts``) from ``/ws``, reconnecting and resuming exactly
        after a dropped connection (:mod:`aitbc.sdk.events`).

        >>> async for event in client.events("job_updates"):
        ...     print(event.type, event.data["job_id"])
        """
        return event_stream(self.base_url, self.api_key, channels, since, reconnect=reconnect)

    async def stream_events(
        self, job_id: str, last_event_id: str | None = None
    ) -> AsyncIterator[StreamEvent]:
        """A job's stream events until ``end``, reconnecting (with ``Last-Event-ID``)
        when the connection breaks."""
        attempt = 0
        while True:
            path, headers = _stream_request(job_id, last_event_id)
            parser = _SseParser()
            try:
                async with self._http.stream(
                    "GET",
                    self.base_url + path,
                    headers={**self._headers(), **headers},
                    timeout=httpx.Timeout(self.timeout, read=None),
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from(response)
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        last_event_id, attempt = event.id, 0
                        yield event
                        if event.name == "end":
                            return
            except httpx.TransportError as exc:
                wait = self._retry_wait(attempt, self._transport_error(exc), idempotent=True)
                if wait is None:
                    raise self._transport_error(exc) from exc
                await asyncio.sleep(wait)
                attempt += 1


# --- resources --------------------------------------------------------------------


class Jobs:
    """``client.jobs``: submit, read, list, wait for, stream, cancel, download."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def submit(self, prompt: str, **options: Any) -> Job:
        """Queue a job (``options``: see :func:`submit_call`); the job as queued."""
        return self._client.send(submit_call(prompt, **options))

    def get(self, job_id: str) -> Job:
        """One job."""
        return self._client.send(job_call(job_id))

    def list(self, *, status: str | None = None, limit: int = 20, offset: int = 0) -> JobList:
        """One page of the caller's jobs, newest first."""
        return self._client.send(list_call(status, limit, offset))

    def iter(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job of the caller, newest first, a page at a time."""
        offset = 0
        while True:
            page = self.list(status=status, limit=page_size, offset=offset)
            yield from page.jobs
            if not page.has_more or not page.jobs:
                return
            offset += len(page.jobs)

    def history(self, start: date, end: date, *, limit: int = 20, offset: int = 0) -> JobList:
        """Jobs created between two UTC dates, both inclusive."""
        return self._client.send(history_call(start, end, limit, offset))

    def cancel(self, job_id: str) -> Job:
        """Cancel a pending or running job (its hold refunded)."""
        return self._client.send(cancel_call(job_id))

    def download(self, job_id: str) -> str:
        """A completed job's result file (JSON or text, as its output_config says)."""
        return self._client.send(download_call(job_id))

    def receipt(self, job_id: str) -> dict[str, Any]:
        """A completed job's signed receipt."""
        return self._client.send(receipt_call(f"/v1/jobs/{job_id}/receipt"))

    def wait(
        self,
        job_id: str,
        *,
        timeout_seconds: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
        poll_seconds: float = 0.5,
    ) -> Job:
        """The job once it is completed, failed or cancelled; ``on_progress`` is told
        each change of status, progress or miner. ``TimeoutError`` after
        ``timeout_seconds``."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        seen = None
        while True:
            job = self.get(job_id)
            if on_progress is not None and _progress_key(job) != seen:
                seen = _progress_key(job)
                on_progress(job)
            if job.status in TERMINAL:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status.value}")
            time.sleep(poll_seconds)

    def stream(self, job_id: str) -> Iterator[str]:
        """The job's text as it is generated, until it ends (a ``reset`` — the job
        requeued — raises :class:`StreamRestarted`; see :meth:`Client.stream_events`)."""
        for event in self._client.stream_events(job_id):
            if event.name == "token":
                yield str(event.data["text"])
            elif event.name == "reset":
                raise StreamRestarted(job_id)


class StreamRestarted(Exception):
    """The job was requeued to another miner mid-stream: what was yielded is void
    (``stream_events`` shows the ``reset`` and the new attempt instead)."""


class AsyncJobs:
    """``client.jobs`` of :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def submit(self, prompt: str, **options: Any) -> Job:
        """Queue a job (``options``: see :func:`submit_call`)."""
        return await self._client.send(submit_call(prompt, **options))

    async def get(self, job_id: str) -> Job:
        """One job."""
        return await self._client.send(job_call(job_id))

    async def list(self, *, status: str | None = None, limit: int = 20, offset: int = 0) -> JobList:
        """One page of the caller's jobs, newest first."""
        return await self._client.send(list_call(status, limit, offset))

    async def iter(self, *, status: str | None = None, page_size: int = 100) -> AsyncIterator[Job]:
        """Every job of the caller, newest first, a page at a time."""
        offset = 0
        while True:
            page = await self.list(status=status, limit=page_size, offset=offset)
            for job in page.jobs:
                yield job
            if not page.has_more or not page.jobs:
                return
            offset += len(page.jobs)

    async def history(self, start: date, end: date, *, limit: int = 20, offset: int = 0) -> JobList:
        """Jobs created between two UTC dates, both inclusive."""
        return await self._client.send(history_call(start, end, limit, offset))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a pending or running job (its hold refunded)."""
        return await self._client.send(cancel_call(job_id))

    async def download(self, job_id: str) -> str:
        """A completed job's result file."""
        return await self._client.send(download_call(job_id))

    async def receipt(self, job_id: str) -> dict[str, Any]:
        """A completed job's signed receipt."""
        return await self._client.send(receipt_call(f"/v1/jobs/{job_id}/receipt"))

    async def wait(
        self,
        job_id: str,
        *,
        timeout_seconds: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
        poll_seconds: float = 0.5,
    ) -> Job:
        """The job once it is completed, failed or cancelled (see :meth:`Jobs.wait`)."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        seen = None
        while True:
            job = await self.get(job_id)
            if on_progress is not None and _progress_key(job) != seen:
                seen = _progress_key(job)
                on_progress(job)
            if job.status in TERMINAL:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status.value}")
            await asyncio.sleep(poll_seconds)

    async def stream(self, job_id: str) -> AsyncIterator[str]:
        """The job's text as it is generated (see :meth:`Jobs.stream`)."""
        async for event in self._client.stream_events(job_id):
            if event.name == "token":
                yield str(event.data["text"])
            elif event.name == "reset":
                raise StreamRestarted(job_id)


class Receipts:
    """``client.receipts``: signed receipts, and their verification against keys."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, receipt_id: str) -> dict[str, Any]:
        """One signed receipt."""
        return self._client.send(receipt_call(f"/v1/receipts/{receipt_id}"))

    def list(
        self, *, client: str | None = None, provider: str | None = None, limit: int = 20
    ) -> list[Any]:
        """Receipts visible to the caller, newest first."""
        return self._client.send(receipts_call(client, provider, limit))

    def keys(self) -> KeyRing:
        """The coordinator's published keys (pin them once: see ``aitbc keys pin``)."""
        return KeyRing.from_document(self._client.send(keys_call()))

    def verify(
        self, receipt: Mapping[str, Any] | bytes | str, keys: KeyRing, **checks: Any
    ) -> VerifiedReceipt:
        """Check a receipt offline against pinned ``keys`` (``checks``: ``result``,
        ``prompt``, ``miner_keys``); raises ``VerificationFailed``."""
        return verify_receipt(receipt, keys, **checks)


class AsyncReceipts:
    """``client.receipts`` of :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, receipt_id: str) -> dict[str, Any]:
        """One signed receipt."""
        return await self._client.send(receipt_call(f"/v1/receipts/{receipt_id}"))

    async def list(
        self, *, client: str | None = None, provider: str | None = None, limit: int = 20
    ) -> list[Any]:
        """Receipts visible to the caller, newest first."""
        return await self._client.send(receipts_call(client, provider, limit))

    async def keys(self) -> KeyRing:
        """The coordinator's published keys."""
        return KeyRing.from_document(await self._client.send(keys_call()))

    def verify(
        self, receipt: Mapping[str, Any] | bytes | str, keys: KeyRing, **checks: Any
    ) -> VerifiedReceipt:
        """Check a receipt offline against pinned ``keys`` (no I/O)."""
        return verify_receipt(receipt, keys, **checks)


class Accounts:
    """``client.accounts``: balances and transfers."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def me(self) -> AccountBalance:
        """The caller's balance and what it has in escrow (AIT)."""
        return self._client.send(me_call())

    def get(self, address: str) -> AccountPublic:
        """An account's public balance."""
        return self._client.send(account_call(address))

    def transfer(
        self,
        to: str,
        amount: float | Decimal | str,
        *,
        nonce: int,
        signature: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send AIT (``nonce``: unused by this sender before; a replay is a Conflict)."""
        return self._client.send(transfer_call(to, amount, nonce, signature))


class AsyncAccounts:
    """``client.accounts`` of :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def me(self) -> AccountBalance:
        """The caller's balance and what it has in escrow (AIT)."""
        return await self._client.send(me_call())

    async def get(self, address: str) -> AccountPublic:
        """An account's public balance."""
        return await self._client.send(account_call(address))

    async def transfer(
        self,
        to: str,
        amount: float | Decimal | str,
        *,
        nonce: int,
        signature: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send AIT (see :meth:`Accounts.transfer`)."""
        return await self._client.send(transfer_call(to, amount, nonce, signature))


class Models:
    """``client.models``: what miners online now serve."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> list[dict[str, Any]]:
        """Models with their lowest price (AIT per 1,000 tokens) and miner count."""
        return self._client.send(models_call())


class AsyncModels:
    """``client.models`` of :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> list[dict[str, Any]]:
        """Models with their lowest price and miner count."""
        return await self._client.send(models_call())


class Miners:
    """``client.miners``: the miner's side (a miner key), for custom miners."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def register(self, **registration: Any) -> dict[str, Any]:
        """Register (the MinerRegistration's members); the credentials, shown once."""
        return self._client.send(register_miner_call(registration))

    def heartbeat(self, miner_id: str, running_jobs: list[str]) -> dict[str, Any]:
        """Stay online and renew the leases of ``running_jobs``."""
        return self._client.send(heartbeat_call(miner_id, running_jobs))

    def poll(self, miner_id: str, *, wait: float = 0) -> Job | None:
        """A job this miner can run, waiting up to ``wait`` seconds; None if none."""
        return self._client.send(poll_call(miner_id, wait))

    def claim(self, job_id: str, miner_id: str) -> Job:
        """Take a job (Conflict when another miner got it)."""
        return self._client.send(claim_call(job_id, miner_id))

    def complete(self, job_id: str, completion: Mapping[str, Any]) -> dict[str, Any]:
        """Deliver a result (a JobResult); the signed receipt."""
        return self._client.send(complete_call(job_id, completion))

    def fail(self, job_id: str, miner_id: str, error: str, *, retryable: bool = True) -> Job:
        """Give a job up (retryable: it is requeued while attempts remain)."""
        return self._client.send(fail_call(job_id, miner_id, error, retryable))


class AsyncMiners:
    """``client.miners`` of :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def register(self, **registration: Any) -> dict[str, Any]:
        """Register; the credentials, shown once."""
        return await self._client.send(register_miner_call(registration))

    async def heartbeat(self, miner_id: str, running_jobs: list[str]) -> dict[str, Any]:
        """Stay online and renew the leases of ``running_jobs``."""
        return await self._client.send(heartbeat_call(miner_id, running_jobs))

    async def poll(self, miner_id: str, *, wait: float = 0) -> Job | None:
        """A job this miner can run, or None."""
        return await self._client.send(poll_call(miner_id, wait))

    async def claim(self, job_id: str, miner_id: str) -> Job:
        """Take a job."""
        return await self._client.send(claim_call(job_id, miner_id))

    async def complete(self, job_id: str, completion: Mapping[str, Any]) -> dict[str, Any]:
        """Deliver a result; the signed receipt."""
        return await self._client.send(complete_call(job_id, completion))

    async def fail(self, job_id: str, miner_id: str, error: str, *, retryable: bool = True) -> Job:
        """Give a job up."""
        return await self._client.send(fail_call(job_id, miner_id, error, retryable))


class Admin:
    """``client.admin``: the admin key's calls."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def miners(self) -> list[Miner]:
        """Every registered miner."""
        return self._client.send(admin_miners_call())

    def stats(self) -> AdminStats:
        """Counts of jobs, miners and receipts."""
        return self._client.send(admin_stats_call())

    def mint(self, address: str, amount: float | Decimal | str) -> dict[str, Any]:
        """Create AIT for an account; the mint transaction."""
        return self._client.send(mint_call(address, amount))


class AsyncAdmin:
    """``client.admin`` of :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def miners(self) -> list[Miner]:
        """Every registered miner."""
        return await self._client.send(admin_miners_call())

    async def stats(self) -> AdminStats:
        """Counts of jobs, miners and receipts."""
        return await self._client.send(admin_stats_call())

    async def mint(self, address: str, amount: float | Decimal | str) -> dict[str, Any]:
        """Create AIT for an account; the mint transaction."""
        return await self._client.send(mint_call(address, amount))
