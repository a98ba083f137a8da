"""Stored rows to wire schemas."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from aitbc.domain.jobs import JobStatus, Priority
from aitbc.domain.money import to_ait
from aitbc.schemas import GpuInfo, Job, JobRequirements, Miner, OutputConfig, Usage
from aitbc.storage import models

PRIORITY_BY_RANK = {priority.rank: priority for priority in Priority}


def job_view(job: Row[Any] | models.Job) -> Job:
    """The ``Job`` schema of a stored job.

    Built with ``model_construct`` (no validation): every value comes from a row this
    service wrote after validating it, and re-validating it on each of the thousands
    of reads per second was a tenth of the coordinator's CPU.
    """
    usage = (
        Usage.model_construct(
            prompt_tokens=job.prompt_tokens, completion_tokens=job.completion_tokens
        )
        if job.prompt_tokens is not None and job.completion_tokens is not None
        else None
    )
    return Job.model_construct(
        job_id=job.id,
        status=JobStatus(job.status),
        model=job.model,
        prompt=job.prompt,
        input_file_id=job.input_file_id,
        params=job.params,
        requirements=JobRequirements.model_construct(
            gpu_type=job.req_gpu_type,
            gpu_count=job.req_gpu_count or None,
            min_vram_gb=job.req_min_vram_gb or None,
        ),
        priority=PRIORITY_BY_RANK[job.priority],
        timeout_seconds=job.timeout_seconds,
        output_config=OutputConfig.model_construct(**job.output_config),
        progress=job.progress,
        attempts=job.attempts,
        miner_id=job.miner_id,
        client_id=job.client_id,
        result=job.result,
        error=job.error,
        error_code=job.error_code,
        usage=usage,
        estimated_cost=(
            None if job.estimated_cost_micro is None else to_ait(job.estimated_cost_micro)
        ),
        estimated_time_seconds=job.estimated_time_seconds,
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
    )


def miner_view(miner: models.Miner, jobs_completed: int) -> Miner:
    """The admin's ``Miner`` schema of a stored miner."""
    return Miner(
        miner_id=miner.id,
        capabilities=miner.capabilities,
        gpu_info=GpuInfo.model_construct(
            name=miner.gpu_name, memory=miner.gpu_memory_gb, count=miner.gpu_count
        ),
        price=to_ait(miner.price_micro),
        status=miner.status,
        utilisation=miner.utilisation,
        running_jobs=miner.running_jobs,
        jobs_completed=jobs_completed,
        registered_at=miner.registered_at,
        last_heartbeat_at=miner.last_heartbeat_at,
    )
