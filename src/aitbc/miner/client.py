"""The miner's side of the coordinator's HTTP API, with retries that back off.

Transient trouble (connection errors, timeouts, 5xx, 429) is
:class:`CoordinatorUnavailable`, retried by :func:`with_backoff` with exponential
backoff and full jitter; a 4xx answer is :class:`Refused`, final.

One failure is not trouble: a request sent on a kept-alive connection that the
server closed as idle just before (uvicorn closes them after 5 s, and a miner's
heartbeat comes every 5 s) fails with ``ReadError('')`` or "server disconnected"
although the coordinator is healthy. Such a request is sent again at once, quietly,
on a new connection (:data:`STALE_CONNECTION_ERRORS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

log = logging.getLogger(__name__)

T = TypeVar("T")
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 15.0
# What a request on a connection the server has closed fails with. The server closes
# an idle connection without reading what arrives on it, so the request was not
# taken (a server that died mid-request looks the same; sending once more then meets
# the same answer a backoff retry would).
STALE_CONNECTION_ERRORS = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


class CoordinatorUnavailable(Exception):
    """The coordinator could not be reached or answered 5xx/429: try again later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """A final 4xx answer, with the contract's ``error_code`` and ``detail``."""

    def __init__(self, status: int, error_code: str, detail: str) -> None:
        super().__init__(f"{status} {error_code}: {detail}")
        self.status = status
        self.error_code = error_code
        self.detail = detail


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base x 2^attempt)]."""
    return rng.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))


async def with_backoff(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    stop: asyncio.Event | None = None,
    rng: random.Random | None = None,
) -> T:
    """``call()`` until it does not raise CoordinatorUnavailable (or ``stop`` is set,
    which re-raises the last error)."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
    attempt = 0
    while True:
        try:
            return await call()
        except CoordinatorUnavailable as exc:
            if stop is not None and stop.is_set():
                raise
            delay = max(backoff_delay(attempt, rng), exc.retry_after or 0.0)
            log.warning("%s: %s; retrying in %.1f s", what, exc, delay)
            attempt += 1
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


class CoordinatorClient:
    """Typed calls to the coordinator on behalf of one miner."""

    def __init__(self, base_url: str, *, timeout_seconds: float = 60.0) -> None:
        base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout_seconds)
        # For the one resend after a stale connection: keeps no connection, so each
        # request on it opens a new one (the pool of ``http`` may hold more stale ones).
        self.fresh_http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout_seconds,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self.api_key: str | None = None

    async def close(self) -> None:
        """Close the connection pools."""
        await self.http.aclose()
        await self.fresh_http.aclose()

    async def _call(
        self, method: str, path: str, *, read_seconds: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"X-Api-Key": self.api_key} if self.api_key else {}
        extension: Any = httpx.USE_CLIENT_DEFAULT if read_seconds is None else read_seconds
        try:
            try:
                response = await self.http.request(
                    method, path, headers=headers, timeout=extension, **kwargs
                )
            except STALE_CONNECTION_ERRORS as exc:
                log.debug("%s %s: %r; sending it again on a new connection", method, path, exc)
                response = await self.fresh_http.request(
                    method, path, headers=headers, timeout=extension, **kwargs
                )
        except httpx.HTTPError as exc:
            raise CoordinatorUnavailable(f"{method} {path}: {exc!r}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = response.headers.get("retry-after")
            raise CoordinatorUnavailable(
                f"{method} {path}: {response.status_code}",
                float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        if response.status_code >= 400:
            try:
                body = response.json()
                code, detail = str(body.get("error_code")), str(body.get("detail"))
            except (ValueError, AttributeError):
                code, detail = "error", response.text[:200]
            raise Refused(response.status_code, code, detail)
        return response

    async def register(self, registration: dict[str, Any]) -> str | None:
        """Register (the new API key) or, with a key, update the registration (None)."""
        response = await self._call("POST", "/v1/miners/register", json=registration)
        if response.status_code == 204:
            return None
        api_key: str = response.json()["api_key"]
        return api_key

    async def heartbeat(self, miner_id: str, beat: dict[str, Any]) -> list[str]:
        """Send a heartbeat; the jobs the miner must stop."""
        response = await self._call("POST", f"/v1/miners/{miner_id}/heartbeat", json=beat)
        cancelled: list[str] = response.json()["cancelled_jobs"]
        return cancelled

    async def next_job(
        self, miner_id: str, wait_seconds: float, *, claim: bool = False
    ) -> dict[str, Any] | None:
        """Long-poll for a job this miner can run (``claim``: and claim it, in the same
        request; a coordinator that predates it returns the job unclaimed)."""
        params: dict[str, Any] = {"miner_id": miner_id, "wait": wait_seconds}
        if claim:
            params["claim"] = "true"
        response = await self._call(
            "GET", "/v1/jobs/available", params=params, read_seconds=wait_seconds + 30
        )
        job: dict[str, Any] | None = response.json()
        return job

    async def claim(self, job_id: str, miner_id: str) -> dict[str, Any]:
        """Take the job (Refused 409 when another miner got it)."""
        response = await self._call("POST", f"/v1/jobs/{job_id}/claim", json={"miner_id": miner_id})
        job: dict[str, Any] = response.json()
        return job

    async def progress(
        self,
        job_id: str,
        miner_id: str,
        percent: int,
        delta: tuple[int, str] | None = None,
    ) -> dict[str, Any]:
        """Report progress, and ``delta`` (``(offset, text)``: the output's characters
        from ``offset``) when there is new text; the coordinator's acknowledgement
        (``should_stop``: the miner must stop the job; ``streamed``: the output's
        characters it holds)."""
        body: dict[str, Any] = {"miner_id": miner_id, "progress": percent}
        if delta is not None:
            body["offset"], body["delta"] = delta
        response = await self._call("POST", f"/v1/jobs/{job_id}/progress", json=body)
        ack: dict[str, Any] = response.json()
        return ack

    async def fail(
        self,
        job_id: str,
        miner_id: str,
        error: str,
        retryable: bool,
        *,
        handed_back: bool = False,
    ) -> None:
        """Give the job up; ``handed_back``: unfinished because the miner is stopping,
        which costs the job none of its attempts."""
        await self._call(
            "POST",
            f"/v1/jobs/{job_id}/fail",
            json={
                "miner_id": miner_id,
                "error": error[:10_000],
                "retryable": retryable,
                "handed_back": handed_back,
            },
        )

    async def complete(self, job_id: str, completion: dict[str, Any]) -> dict[str, Any]:
        """Deliver a result; the coordinator's signed receipt."""
        response = await self._call("POST", f"/v1/jobs/{job_id}/complete", json=completion)
        receipt: dict[str, Any] = response.json()
        return receipt
