"""Receipt use cases: one receipt by id or by job, pages of them, and a receipt's
offline-checkable bundle (with its inclusion proof and block header).

Receipts are stored as their canonical JSON text and handed out unchanged, so a
response body hashes to the same SHA-256 the ledger records. A client sees the
receipts of its own jobs, a miner those it earned, an admin all of them; a receipt
someone may not see is reported as missing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row

from aitbc.errors import NotFound
from aitbc.services import explorer
from aitbc.services._job_steps import load_visible_job
from aitbc.services.auth import require_role
from aitbc.services.runtime import Principal, Runtime
from aitbc.storage import receipt_queries
from aitbc.storage.db import read


def _visible(principal: Principal, row: Row[Any]) -> bool:
    if principal.is_admin:
        return True
    if principal.role == "client":
        return bool(row.client_id == principal.owner_id)
    return principal.role == "miner" and row.provider == principal.owner_id


async def get(runtime: Runtime, principal: Principal, receipt_id: str) -> str:
    """One receipt by id."""
    require_role(principal, "client", "miner", "admin")
    row = await read(runtime.engine, receipt_queries.receipt_by_id, receipt_id)
    if row is None or not _visible(principal, row):
        raise NotFound(f"receipt {receipt_id} not found", error_code="receipt_not_found")
    return str(row.document)


async def for_job(runtime: Runtime, principal: Principal, job_id: str) -> str:
    """The receipt of a completed job."""
    require_role(principal, "client", "miner", "admin")

    def work(connection: Connection) -> str:
        row = receipt_queries.receipt_for_job(connection, job_id)
        if row is not None and _visible(principal, row):
            return str(row.document)
        job = load_visible_job(connection, principal, job_id)
        raise NotFound(
            f"job {job_id} is {job.status}; a receipt exists once it is completed",
            error_code="receipt_not_found",
        )

    return await read(runtime.engine, work)


async def page(
    runtime: Runtime,
    principal: Principal,
    *,
    client: str | None,
    provider: str | None,
    limit: int,
    offset: int,
) -> list[str]:
    """Receipts newest first, narrowed by ``client`` and ``provider``; a client only
    ever sees its own and a miner only those it earned, whatever the filters say."""
    require_role(principal, "client", "miner", "admin")
    if principal.role == "client":
        if client is not None and client != principal.owner_id:
            return []
        client = principal.owner_id
    elif principal.role == "miner":
        if provider is not None and provider != principal.owner_id:
            return []
        provider = principal.owner_id
    return list(
        await read(
            runtime.engine,
            receipt_queries.receipt_page,
            client_id=client,
            provider=provider,
            limit=limit,
            offset=offset,
        )
    )


async def bundle(runtime: Runtime, principal: Principal, receipt_id: str) -> str:
    """A receipt with everything needed to check it offline against pinned keys:
    ``{"receipt", "transaction", "proof", "block": {"header", "signature"}}``
    (DESIGN.md section 3; built by ``services.explorer.receipt_bundle_text``).
    Seen by whoever may see the receipt; 409 ``not_sealed`` until its block is sealed."""
    require_role(principal, "client", "miner", "admin")

    def work(connection: Connection) -> str:
        row = receipt_queries.receipt_by_id(connection, receipt_id)
        if row is None or not _visible(principal, row):
            raise NotFound(f"receipt {receipt_id} not found", error_code="receipt_not_found")
        return explorer.receipt_bundle_text(connection, receipt_id, str(row.document))

    return await read(runtime.engine, work)
