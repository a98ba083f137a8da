"""The miner daemon: register, heartbeat, long-poll, claim, run, report, complete.

Tasks, all on one event loop:

- **heartbeat**: every ``heartbeat_seconds`` whatever the jobs are doing; lists the
  jobs the miner holds (running, or finished and not yet delivered) so their
  leases stay renewed, and stops those the coordinator lists as cancelled;
- **poll**: one long poll per free slot of ``concurrency``, each claiming the job it
  gets (jobs submitted together start together);
- **one task per job**: generate on the backend, report progress as tokens come
  (the answer's ``should_stop`` cancels), then keep the result on disk and deliver it;
- **outbox**: re-send kept results until the coordinator acknowledges them.

The three long-lived tasks are named and watched (as procrastinate's worker watches
its side tasks): the daemon runs until ``stop`` is set or one of them fails, say a
poll answered 401 because the miner's key was revoked. A failure is logged in one
line and goes through the same shutdown, then :meth:`Miner.run` raises
:class:`DaemonFailed` (``aitbc miner`` exits 1).

Stopping: no new work is taken, running jobs get ``grace_seconds`` to finish, the
rest are stopped and handed back (a failure report with ``handed_back``, which costs
the job none of its attempts), and kept results get one more delivery attempt before
exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from aitbc.domain.receipts import miner_statement, sign_miner_statement, text_hash
from aitbc.miner import hardware as hardware_probe
from aitbc.miner.backends.base import (
    BACKEND_UNREACHABLE,
    Backend,
    BackendError,
    GenerationCancelled,
    GenerationControl,
    GenerationRequest,
)
from aitbc.miner.client import CoordinatorClient, CoordinatorUnavailable, Refused, with_backoff
from aitbc.miner.state import Identity, MinerState
from aitbc.miner.streaming import OutputStream

log = logging.getLogger(__name__)

# Answers to a completion that no resend can change: drop the kept result.
FINAL_COMPLETION_STATUSES = frozenset({400, 403, 404, 409, 413, 422})
# A heartbeat answered with these cannot succeed later: the key is not (or no longer)
# this miner's. Other refusals of a heartbeat are logged and the next one is sent.
KEY_REFUSED_STATUSES = frozenset({401, 403})


class DaemonFailed(Exception):
    """One of the daemon's tasks failed (or registration was refused); the daemon
    has already shut down gracefully and logged why."""


@dataclass
class MinerConfig:
    """How the daemon behaves; flags of ``aitbc miner``."""

    coordinator_url: str
    data_dir: Path
    miner_id: str | None = None
    price: Decimal = Decimal("0")
    concurrency: int = 1
    heartbeat_seconds: float = 5.0
    poll_wait_seconds: float = 20.0
    progress_seconds: float = 0.5
    # After a report that carried text, the next waits this long for more to gather:
    # the first text goes at once (time to first token), the rest in batches (each
    # report is a request and a transaction on the coordinator).
    stream_batch_seconds: float = 0.2
    grace_seconds: float = 10.0
    outbox_retry_seconds: float = 2.0


def default_miner_id() -> str:
    """A readable, unique id: the host name plus a random suffix."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "miner"
    return f"{host}-{secrets.token_hex(3)}"


@dataclass
class _Running:
    job_id: str
    max_tokens: int
    output: OutputStream
    control: GenerationControl = field(default_factory=GenerationControl)
    produced: int = 0
    stopped_by_coordinator: bool = False
    # Set (on the event loop) when the engine produced text not reported yet.
    text_ready: asyncio.Event = field(default_factory=asyncio.Event)


class Miner:
    """One miner process serving one backend."""

    def __init__(self, config: MinerConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.state = MinerState(config.data_dir)
        self.client = CoordinatorClient(config.coordinator_url)
        self.key = self.state.signing_key(secrets.token_bytes)
        self.hardware = hardware_probe.detect()
        self.running: dict[str, _Running] = {}
        self.kept: dict[str, dict[str, Any]] = {}
        self.miner_id = ""
        self.stopping = asyncio.Event()
        self.slots = asyncio.Semaphore(max(1, config.concurrency))
        self.rng = random.Random()  # noqa: S311 - jitter, not secrets
        self._job_tasks: set[asyncio.Task[None]] = set()
        # Cleared while the engine cannot be reached: no jobs are taken until it is
        # back, so they are not claimed only to fail (and burn their attempts).
        self.backend_up = asyncio.Event()
        self.backend_up.set()
        self._recovery: asyncio.Task[None] | None = None

    # --- start-up ---------------------------------------------------------------

    def _registration(self) -> dict[str, Any]:
        return {
            "miner_id": self.miner_id,
            "capabilities": self.backend.models(),
            "gpu_info": self.hardware.gpu_info(),
            "cpu_info": self.hardware.cpu_info(),
            "price": str(self.config.price),
            "concurrency": self.config.concurrency,
            "template_tokens": self.backend.template_tokens(),
            "public_key": self.key.public_key_b64,
        }

    async def register(self) -> None:
        """Register on first start (keeping the key shown once) or update on restart."""
        url = self.config.coordinator_url.rstrip("/")
        identity = self.state.load_identity()
        if identity is not None and identity.coordinator_url == url:
            self.miner_id = identity.miner_id
            self.client.api_key = identity.api_key
            await with_backoff(
                lambda: self.client.register(self._registration()),
                what="updating the registration",
            )
            log.info("miner %s re-registered at %s", self.miner_id, url)
            return
        self.miner_id = self.config.miner_id or default_miner_id()
        self.client.api_key = None
        api_key = await with_backoff(
            lambda: self.client.register(self._registration()), what="registering"
        )
        if api_key is None:  # pragma: no cover - only with a key, which we do not send
            raise RuntimeError("registration returned no API key")
        self.client.api_key = api_key
        self.state.save_identity(Identity(self.miner_id, api_key, url))
        log.info(
            "miner %s registered at %s; key kept in %s", self.miner_id, url, self.state.data_dir
        )

    # --- the main loop --------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set or a task fails, then shut down gracefully;
        raise :class:`DaemonFailed` after a failure."""
        await self.backend.start()
        try:
            if not await self._register_unless_stopped(stop):
                return
            self.kept = self.state.kept()
            tasks = {
                "heartbeat": asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                "outbox": asyncio.create_task(self._outbox_loop(), name="outbox"),
                "poll": asyncio.create_task(self._poll_loops(), name="poll"),
            }
            failure = await self._watch(tasks, stop)
            await self._shutdown(tasks)
            if failure is not None:
                raise DaemonFailed(failure)
        finally:
            await self.client.close()
            await self.backend.close()

    async def _register_unless_stopped(self, stop: asyncio.Event) -> bool:
        """Register (retrying while the coordinator is away); False when ``stop``
        came first."""
        registering = asyncio.create_task(self.register(), name="register")
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({registering, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not registering.done():
            registering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await registering
            log.info("stopped before the coordinator could be reached")
            return False
        try:
            registering.result()
        except Refused as exc:
            log.error("registration refused: %s", exc)
            raise DaemonFailed(f"registration refused: {exc}") from exc
        return True

    async def _watch(self, tasks: dict[str, asyncio.Task[None]], stop: asyncio.Event) -> str | None:
        """Wait for ``stop`` or the first task to end (each runs forever, so ending is
        failing); None after a stop, else what failed, logged in one line."""
        stopped = asyncio.create_task(stop.wait())
        done, _pending = await asyncio.wait(
            {stopped, *tasks.values()}, return_when=asyncio.FIRST_COMPLETED
        )
        stopped.cancel()
        for name, task in tasks.items():
            if task not in done:
                continue
            error = None if task.cancelled() else task.exception()
            failure = f"the {name} task failed: {error}" if error else f"the {name} task ended"
            expected = error is None or isinstance(error, Refused | CoordinatorUnavailable)
            # A refusal is the coordinator's word and says it all; anything else is a
            # bug here, whose traceback follows the line.
            log.error("stopping: %s; %d running", failure, len(self.running), exc_info=not expected)
            return failure
        log.info("stopping: no new jobs; %d running", len(self.running))
        return None

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        """Take no more jobs, let running ones finish or hand them back, deliver what
        is kept, and stop heartbeating last (it renews the leases of running jobs)."""
        self.stopping.set()
        await _end(tasks["poll"])
        await self._drain()
        await _end(tasks["outbox"])
        await self._deliver_kept(final=True)
        await _end(tasks["heartbeat"])
        if self._recovery is not None:
            await _end(self._recovery)

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period, then stop the rest."""
        if self._job_tasks:
            _done, pending = await asyncio.wait(
                set(self._job_tasks), timeout=self.config.grace_seconds
            )
            for running in list(self.running.values()):
                running.control.cancelled.set()
            if pending:
                await asyncio.wait(pending)

    async def _poll_loops(self) -> None:
        """One long poll per job slot, so jobs submitted together start together (one
        poll at a time would fetch them one round trip after another, each slower
        than the last while the first ones generate); the first to fail stops all."""
        loops = [
            asyncio.create_task(self._poll_loop(), name=f"poll-{index}")
            for index in range(max(1, self.config.concurrency))
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # the first failure is the poll task's
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _poll_loop(self) -> None:
        while True:
            await self.slots.acquire()
            if not self.backend_up.is_set():
                self.slots.release()
                await self.backend_up.wait()
                continue
            try:
                job = await with_backoff(
                    lambda: self.client.next_job(
                        self.miner_id, self.config.poll_wait_seconds, claim=True
                    ),
                    what="polling for jobs",
                )
                if job is None:
                    self.slots.release()
                    continue
                claimed = job.get("status") == "running" and job.get("miner_id") == self.miner_id
                if not self.backend_up.is_set():
                    if claimed:  # taken in the poll: give it back at once
                        await self._fail(
                            job["job_id"], "backend unreachable", retryable=True, handed_back=True
                        )
                    self.slots.release()
                    continue
                if not claimed:
                    try:
                        job = await self.client.claim(job["job_id"], self.miner_id)
                    except (Refused, CoordinatorUnavailable) as exc:
                        log.info("could not claim %s: %s", job["job_id"], exc)
                        self.slots.release()
                        continue
            except BaseException:
                self.slots.release()
                raise
            task = asyncio.create_task(self._run_job(job))
            self._job_tasks.add(task)
            task.add_done_callback(self._job_tasks.discard)

    # --- one job --------------------------------------------------------------------

    async def _run_job(self, job: dict[str, Any]) -> None:
        job_id = job["job_id"]
        request = GenerationRequest.from_job(job)
        running = _Running(job_id, request.max_tokens, OutputStream(request.stop))
        running.control.on_token = lambda produced: setattr(running, "produced", produced)
        loop = asyncio.get_running_loop()

        def on_text(text: str) -> None:  # called on the engine's thread
            running.output.feed(text)
            loop.call_soon_threadsafe(running.text_ready.set)

        running.control.on_text = on_text
        self.running[job_id] = running
        log.info(
            "job %s started: %s, up to %d tokens (running %d of %d)",
            job_id,
            request.model,
            request.max_tokens,
            len(self.running),
            self.config.concurrency,
            extra={"job_id": job_id, "model": request.model},
        )
        started = time.monotonic()
        reporter = asyncio.create_task(self._report_progress(running))
        try:
            generation = await self.backend.generate(request, running.control)
        except GenerationCancelled:
            if running.stopped_by_coordinator:
                log.info("job %s stopped: cancelled or no longer ours", job_id)
            else:
                await self._fail(job_id, "miner shutting down", retryable=True, handed_back=True)
            return
        except BackendError as exc:
            log.warning("job %s failed: %s (%s)", job_id, exc, exc.error_code)
            if exc.error_code == BACKEND_UNREACHABLE:
                self._backend_lost()
            await self._fail(job_id, f"{exc.error_code}: {exc}", retryable=exc.retryable)
            return
        except Exception as exc:  # a backend bug must not take the daemon down
            log.exception("job %s: backend crashed", job_id)
            await self._fail(job_id, f"backend_error: {exc!r}", retryable=True)
            return
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            self.running.pop(job_id, None)
            self.slots.release()
        seconds = time.monotonic() - started
        log.info(
            "job %s done: %d tokens in %.2f s (%.1f tokens/s)",
            job_id,
            generation.completion_tokens,
            seconds,
            generation.completion_tokens / seconds if seconds > 0 else 0.0,
            extra={
                "job_id": job_id,
                "completion_tokens": generation.completion_tokens,
                "seconds": round(seconds, 3),
            },
        )
        units = generation.prompt_tokens + generation.completion_tokens
        statement = miner_statement(job_id, self.miner_id, text_hash(generation.text), units)
        completion = {
            "miner_id": self.miner_id,
            "result": generation.text,
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens,
            },
            "miner_signature": sign_miner_statement(self.key, statement),
        }
        # On disk before the first send: an outage or a crash cannot lose it.
        self.state.keep(job_id, completion)
        self.kept[job_id] = completion
        await self._deliver(job_id, completion)

    def _backend_lost(self) -> None:
        """Stop taking jobs and watch the engine until it answers again."""
        if not self.backend_up.is_set():
            return
        self.backend_up.clear()
        log.warning(
            "the %s backend cannot be reached: taking no jobs until it is back", self.backend.name
        )
        self._recovery = asyncio.create_task(self._await_backend())

    async def _await_backend(self) -> None:
        attempt = 0
        while not await self.backend.healthy():
            attempt += 1
            await asyncio.sleep(self.rng.uniform(0.5, 1.0) * min(10.0, 0.5 * 2**attempt))
        log.info("the %s backend is back: taking jobs again", self.backend.name)
        self.backend_up.set()

    async def _report_progress(self, running: _Running) -> None:
        """Report new text as soon as there is some (the first at once; then one report
        in flight at a time, at most one per ``stream_batch_seconds``, so text produced
        meanwhile travels together in the next), and the percentage at least every
        ``progress_seconds``."""
        reported = -1
        last_text_report = None
        loop = asyncio.get_running_loop()
        while True:
            if last_text_report is not None:
                gap = last_text_report + self.config.stream_batch_seconds - loop.time()
                if gap > 0:
                    await asyncio.sleep(gap)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.progress_seconds):
                    await running.text_ready.wait()
            running.text_ready.clear()
            percent = min(99, 100 * running.produced // max(1, running.max_tokens))
            delta = running.output.pending()
            if delta is None and percent == reported and not self.stopping.is_set():
                continue
            try:
                ack = await self.client.progress(running.job_id, self.miner_id, percent, delta)
            except CoordinatorUnavailable:
                continue  # the heartbeat keeps the lease; try again next tick
            except Refused as exc:
                if exc.error_code == "stream_gap":
                    running.output.resend_all()
                    running.text_ready.set()
                    continue
                should_stop = exc.status in (404, 409)
            else:
                should_stop = bool(ack["should_stop"])
                running.output.acknowledged(int(ack.get("streamed", 0)))
                if delta is not None:
                    last_text_report = loop.time()
            reported = percent
            if should_stop:
                running.stopped_by_coordinator = True
                running.control.cancelled.set()
                return

    async def _fail(
        self, job_id: str, error: str, *, retryable: bool, handed_back: bool = False
    ) -> None:
        try:
            await with_backoff(
                lambda: self.client.fail(
                    job_id, self.miner_id, error, retryable, handed_back=handed_back
                ),
                what=f"reporting {job_id} as failed",
                # While stopping: one attempt. A lost report costs nothing lasting,
                # the job's lease lapses and the coordinator requeues it.
                stop=self.stopping,
            )
        except (Refused, CoordinatorUnavailable) as exc:
            log.info("failure report for %s not taken: %s", job_id, exc)

    async def _deliver(self, job_id: str, completion: dict[str, Any]) -> bool:
        """One delivery attempt; True once the result needs no more sending."""
        try:
            receipt = await self.client.complete(job_id, completion)
        except CoordinatorUnavailable as exc:
            log.warning("result of %s kept for later: %s", job_id, exc)
            return False
        except Refused as exc:
            if exc.status not in FINAL_COMPLETION_STATUSES:
                return False
            log.warning("result of %s refused for good: %s", job_id, exc)
        else:
            log.info(
                "job %s completed: receipt %s, %s tokens, %s AIT",
                job_id,
                receipt.get("receipt_id"),
                receipt.get("units"),
                receipt.get("price"),
            )
        self.state.delivered(job_id)
        self.kept.pop(job_id, None)
        return True

    async def _deliver_kept(self, *, final: bool = False) -> None:
        for job_id, completion in list(self.kept.items()):
            if not await self._deliver(job_id, completion) and final:
                log.warning(
                    "result of %s stays in %s for the next start", job_id, self.state.outbox_dir
                )

    async def _outbox_loop(self) -> None:
        attempt = 0
        while True:
            if self.kept:
                before = len(self.kept)
                await self._deliver_kept()
                attempt = 0 if len(self.kept) < before else attempt + 1
            delay = self.config.outbox_retry_seconds * min(8, 2**attempt)
            await asyncio.sleep(self.rng.uniform(0.5 * delay, delay))

    # --- heartbeats ----------------------------------------------------------------

    def state_line(self, status: str) -> str:
        """The miner's state at a glance: idle, running N of M, draining."""
        if status == "draining":
            return f"draining ({len(self.running)} running)"
        if not self.running:
            return "idle"
        return f"running {len(self.running)} of {self.config.concurrency}"

    async def _heartbeat_loop(self) -> None:
        last_state: str | None = None
        while True:
            started = time.monotonic()
            status = (
                "draining"
                if self.stopping.is_set() or not self.backend_up.is_set()
                else ("busy" if len(self.running) >= self.config.concurrency else "online")
            )
            state = self.state_line(status)
            if state != last_state:
                log.info("state: %s", state, extra={"state": status, "running": len(self.running)})
                last_state = state
            beat = {
                "status": status,
                "utilisation": hardware_probe.utilisation(self.hardware),
                "running_jobs": sorted({*self.running, *self.kept}),
            }
            try:
                for job_id in await self.client.heartbeat(self.miner_id, beat):
                    running = self.running.get(job_id)
                    if running is not None:
                        running.stopped_by_coordinator = True
                        running.control.cancelled.set()
            except Refused as exc:
                if exc.status in KEY_REFUSED_STATUSES:
                    raise
                log.warning("heartbeat refused: %s", exc)
            except CoordinatorUnavailable as exc:
                log.warning("heartbeat failed: %s", exc)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.config.heartbeat_seconds - elapsed))


async def _end(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, whatever it ended with (a failure of a task
    being ended was either reported by :meth:`Miner._watch` or no longer matters)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not report it again
