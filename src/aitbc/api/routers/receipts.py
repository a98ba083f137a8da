"""Receipt endpoints: ``GET /v1/receipts``, ``GET /v1/receipts/{id}``, its offline
bundle ``GET /v1/receipts/{id}/bundle``, and the public key list ``GET /v1/keys``
verifiers pin."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from aitbc.api.deps import PrincipalDep, RuntimeDep
from aitbc.api.responses import JSONDocument
from aitbc.errors import ValidationFailed
from aitbc.schemas import MINER_ID_PATTERN, KeyList, Receipt, ReceiptBundle
from aitbc.services import keys, receipts

router = APIRouter(tags=["Receipts"])
MAX_OWNERS = 100
_OWNER = re.compile(MINER_ID_PATTERN)

ReceiptId = Annotated[str, Path(max_length=64, pattern=r"^[^\x00]+$")]
Filter = Annotated[str | None, Query(max_length=128, pattern=r"^[^\x00]+$")]


def receipt_response(document: str) -> Response:
    """A stored receipt, byte for byte (its canonical JSON)."""
    return Response(document, media_type="application/json")


@router.get("/v1/receipts", response_model=list[Receipt])
async def list_receipts(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    client: Filter = None,
    provider: Filter = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """Receipts, newest first: a client's own, a miner's earned, or (admin) all."""
    documents = await receipts.page(
        runtime, principal, client=client, provider=provider, limit=limit, offset=offset
    )
    return Response("[" + ",".join(documents) + "]", media_type="application/json")


@router.get("/v1/receipts/{receipt_id}", response_model=Receipt)
async def get_receipt(
    runtime: RuntimeDep, principal: PrincipalDep, receipt_id: ReceiptId
) -> Response:
    """One receipt, as the canonical JSON that was signed (plus its signature)."""
    return receipt_response(await receipts.get(runtime, principal, receipt_id))


@router.get("/v1/receipts/{receipt_id}/bundle", response_model=ReceiptBundle)
async def get_receipt_bundle(
    runtime: RuntimeDep, principal: PrincipalDep, receipt_id: ReceiptId
) -> Response:
    """One self-contained document to check a receipt offline against a pinned key:
    ``{"receipt": <signed receipt>, "transaction": <its receipt transaction, exactly as
    hashed>, "proof": <that transaction's inclusion proof>, "block": {"header",
    "signature"}}``. Check the receipt's and the block's signatures, that the
    transaction's ``ref`` is the SHA-256 of the receipt's canonical bytes and its id
    (recomputed) the proof's ``tx_id``, that ``proof.block_hash`` is the header's
    SHA-256, and the proof against ``header.tx_root``. 409 ``not_sealed`` until its
    block is sealed."""
    return receipt_response(await receipts.bundle(runtime, principal, receipt_id))


@router.get("/v1/keys", response_model=KeyList, tags=["Keys"])
async def list_keys(
    runtime: RuntimeDep,
    owner: Annotated[list[str] | None, Query(max_length=MAX_OWNERS)] = None,
) -> JSONDocument:
    """Public keys that sign receipts: the coordinator's, current and retired, with the
    period each was valid; ``?owner=<address>`` lists an account's registered keys
    (a miner's sign its results, a client's its transfers), and ``owner`` repeated
    (up to 100) lists several accounts' keys at once, as verifiers fetch them."""
    if owner is not None:
        bad = [name for name in owner if not _OWNER.fullmatch(name)]
        if bad:
            raise ValidationFailed(f"owner {bad[0]!r} is not an address")
    return JSONDocument(await keys.published(runtime, owner))
