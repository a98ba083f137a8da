"""Stored rows to wire schemas."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from aitbc.domain.jobs import JobStatus, Priority
from aitbc.domain.money import to_ait
from aitbc.schemas import CpuInfo, GpuInfo, Miner
from aitbc.storage import models

_UNFINISHED = frozenset({JobStatus.PENDING.value, JobStatus.RUNNING.value})

PRIORITY_NAMES = {priority.rank: priority.value for priority in Priority}

# A job as the JSON object of the ``Job`` schema, ready to serialize.
JobDocument = dict[str, Any]


def iso_z(moment: datetime | None) -> str | None:
    """What pydantic writes for an aware UTC datetime: ISO 8601 ending in "Z"."""
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def job_document(job: Row[Any] | models.Job) -> JobDocument:
    """The ``Job`` schema of a stored job as plain JSON values.

    Jobs are the coordinator's hottest output (every submit, poll, claim and
    completion returns one): building the JSON object directly costs a fraction of
    constructing and serializing the pydantic model. ``Job`` stays the documented
    schema; tests check that every document validates against it and serializes
    identically.
    """
    usage = (
        {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens}
        if job.prompt_tokens is not None and job.completion_tokens is not None
        else None
    )
    output_config = job.output_config
    return {
        "job_id": job.id,
        "status": job.status,
        "model": job.model,
        "prompt": job.prompt,
        "input_file_id": job.input_file_id,
        "params": job.params,
        "requirements": {
            "gpu_type": job.req_gpu_type,
            "gpu_count": job.req_gpu_count or None,
            "min_vram_gb": job.req_min_vram_gb or None,
        },
        "priority": PRIORITY_NAMES[job.priority],
        "timeout_seconds": job.timeout_seconds,
        "output_config": {
            "destination": output_config.get("destination", "local"),
            "format": output_config.get("format", "json"),
        },
        "progress": job.progress,
        "attempts": job.attempts,
        "miner_id": job.miner_id,
        "client_id": job.client_id,
        "result": job.result,
        "error": job.error,
        "error_code": job.error_code,
        "usage": usage,
        "estimated_cost": (
            None if job.estimated_cost_micro is None else to_ait(job.estimated_cost_micro)
        ),
        "estimated_time_seconds": job.estimated_time_seconds,
        "estimate_note": job.estimate_note,
        "max_price": None if job.max_price_micro is None else to_ait(job.max_price_micro),
        # In escrow for the job while it is unfinished; paid out or refunded when it ends.
        "held": to_ait(job.held_micro or 0) if job.status in _UNFINISHED else 0.0,
        "created_at": iso_z(job.created_at),
        "started_at": iso_z(job.started_at),
        "completed_at": iso_z(job.completed_at),
        "trade_id": job.trade_id,
    }


def job_list_document(
    rows: Iterable[Row[Any] | models.Job], total: int, offset: int
) -> dict[str, Any]:
    """One page of jobs in the ``JobList`` envelope."""
    jobs = [job_document(row) for row in rows]
    return {"jobs": jobs, "total": total, "has_more": offset + len(jobs) < total}


def miner_view(miner: models.Miner, jobs_completed: int) -> Miner:
    """The admin's ``Miner`` schema of a stored miner."""
    return Miner(
        miner_id=miner.id,
        capabilities=miner.capabilities,
        gpu_info=GpuInfo.model_construct(
            name=miner.gpu_name, memory=miner.gpu_memory_gb, count=miner.gpu_count
        ),
        cpu_info=CpuInfo.model_validate(miner.cpu_info) if miner.cpu_info else None,
        price=to_ait(miner.price_micro),
        status=miner.status,
        utilisation=miner.utilisation,
        running_jobs=miner.running_jobs,
        jobs_completed=jobs_completed,
        registered_at=miner.registered_at,
        last_heartbeat_at=miner.last_heartbeat_at,
    )
