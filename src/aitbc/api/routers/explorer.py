"""The public Explorer API (DESIGN.md section 6), with no key, under both prefixes the
seeds use: ``/v1/explorer/...`` and ``/explorer/...`` serve the same data.

Lists are newest first: ``limit`` items (default 20, at most 1000, so a verifier can
download a chain in few requests) below the exclusive cursor ``before``: a block
height, a transaction id, a receipt id. The next page's ``before`` is the last item's.
Hashed and signed documents (headers, transactions, receipts) are served exactly as
stored (``services.explorer``); the ``response_model`` of each route documents its
shape in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from aitbc.api.deps import RuntimeDep
from aitbc.api.responses import JSONDocument
from aitbc.schemas import (
    ADDRESS_PATTERN,
    AddressDetail,
    Block,
    BlockDetail,
    InclusionProof,
    NetworkStats,
    Receipt,
    ReceiptProof,
    ReceiptSummary,
    Transaction,
    TransactionRecord,
)
from aitbc.services import explorer

PREFIXES = ("/v1/explorer", "/explorer")
MAX_PAGE = 1000
MAX_ADDRESS_ITEMS = 100
_HEX64 = r"^[0-9a-fA-F]{64}$"

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"items, at most {MAX_PAGE}")]
HeightOrHash = Annotated[
    str,
    Path(
        pattern=r"^([0-9]{1,16}|[0-9a-fA-F]{64})$",
        description="a block height (digits) or a block hash (64 hex digits)",
    ),
]
TxId = Annotated[str, Path(pattern=_HEX64, description="a transaction id (64 hex digits)")]
ReceiptId = Annotated[str, Path(max_length=64, pattern=r"^[^\x00]+$")]
AddressPath = Annotated[str, Path(pattern=ADDRESS_PATTERN)]
AddressFilter = Annotated[str | None, Query(pattern=ADDRESS_PATTERN)]

_routes = APIRouter()


def json_text(body: str) -> Response:
    """A JSON body built as text around stored canonical documents."""
    return Response(body, media_type="application/json")


@_routes.get("/blocks", response_model=list[Block])
async def list_blocks(
    runtime: RuntimeDep,
    limit: Limit = 20,
    before: Annotated[
        int | None, Query(ge=0, le=2**53 - 1, description="only blocks below this height")
    ] = None,
) -> Response:
    """Blocks, newest first: each with its hash, its exact header and the sealer's
    signature over the header's canonical bytes."""
    return json_text(await explorer.blocks(runtime, limit=limit, before=before))


@_routes.get("/blocks/{height_or_hash}", response_model=BlockDetail)
async def get_block(runtime: RuntimeDep, height_or_hash: HeightOrHash) -> Response:
    """One block by height or hash, plus ``tx_ids``, its transaction ids in block order."""
    return json_text(await explorer.block(runtime, height_or_hash))


@_routes.get("/blocks/{height_or_hash}/transactions", response_model=list[Transaction])
async def get_block_transactions(runtime: RuntimeDep, height_or_hash: HeightOrHash) -> Response:
    """Every transaction of a block, in block order, each exactly as hashed."""
    return json_text(await explorer.block_transactions(runtime, height_or_hash))


@_routes.get("/blocks/{height_or_hash}/receipts", response_model=list[Receipt])
async def get_block_receipts(runtime: RuntimeDep, height_or_hash: HeightOrHash) -> Response:
    """The signed receipts the block's ``receipt`` transactions anchor, in block order,
    exactly as signed (each one's SHA-256 is its transaction's ``ref``)."""
    return json_text(await explorer.block_receipts(runtime, height_or_hash))


@_routes.get("/transactions", response_model=list[TransactionRecord])
async def list_transactions(
    runtime: RuntimeDep,
    limit: Limit = 20,
    before: Annotated[
        str | None,
        Query(pattern=_HEX64, description="a transaction id: only transactions older than it"),
    ] = None,
    address: Annotated[
        str | None,
        Query(pattern=ADDRESS_PATTERN, description="only those this address is from or to"),
    ] = None,
    tx_type: Annotated[
        str | None, Query(alias="type", max_length=32, description="only this transaction type")
    ] = None,
) -> Response:
    """Transactions newest first (in the order they were recorded), sealed and pending,
    as records ``{"transaction": <exactly as hashed>, "block_height", "position"}``
    (both null while pending). Page on with ``before`` = the last record's id."""
    return json_text(
        await explorer.transactions(
            runtime,
            limit=limit,
            before=None if before is None else before.lower(),
            address=address,
            tx_type=tx_type,
        )
    )


@_routes.get("/transactions/{tx_id}", response_model=TransactionRecord)
async def get_transaction(runtime: RuntimeDep, tx_id: TxId) -> Response:
    """One transaction as a record: ``{"transaction": <exactly as hashed>,
    "block_height": <its block> | null, "position": <its index there> | null}``, the
    last two null while it is pending."""
    return json_text(await explorer.transaction(runtime, tx_id.lower()))


@_routes.get("/transactions/{tx_id}/proof", response_model=InclusionProof)
async def get_transaction_proof(runtime: RuntimeDep, tx_id: TxId) -> JSONDocument:
    """The inclusion proof of a sealed transaction in its block (RFC 9162 section
    2.1.3.2 against the block header's ``tx_root``); 409 ``not_sealed`` while pending."""
    return JSONDocument(await explorer.transaction_proof(runtime, tx_id.lower()))


@_routes.get("/receipts", response_model=list[ReceiptSummary])
async def list_receipts(
    runtime: RuntimeDep,
    limit: Limit = 20,
    before: Annotated[
        str | None,
        Query(max_length=64, pattern=r"^[^\x00]+$", description="a receipt id: older ones"),
    ] = None,
    client: AddressFilter = None,
    provider: AddressFilter = None,
) -> JSONDocument:
    """Public receipt summaries, newest first: ids, parties, model, units, price, times
    and hashes, where each is anchored; never a prompt or a result."""
    return JSONDocument(
        await explorer.receipts(
            runtime, limit=limit, before=before, client=client, provider=provider
        )
    )


@_routes.get("/receipts/{receipt_id}/proof", response_model=ReceiptProof)
async def get_receipt_proof(runtime: RuntimeDep, receipt_id: ReceiptId) -> Response:
    """``{"receipt": <the signed receipt, as stored>, "proof": <the inclusion proof of
    its receipt transaction>}``; 409 ``not_sealed`` until that is sealed."""
    return json_text(await explorer.receipt_proof(runtime, receipt_id))


@_routes.get("/stats", response_model=NetworkStats)
async def network_stats(runtime: RuntimeDep) -> JSONDocument:
    """Network figures: jobs, active miners, receipts, the chain's height, the total
    supply and fees (AIT), transactions recorded and pending."""
    return JSONDocument(await explorer.stats(runtime))


@_routes.get("/address/{address}", response_model=AddressDetail)
async def get_address(
    runtime: RuntimeDep,
    address: AddressPath,
    limit: Annotated[int, Query(ge=1, le=MAX_ADDRESS_ITEMS)] = 20,
) -> Response:
    """An address's balance, how many transactions it is from or to, and its most
    recent transactions, jobs and receipts (as client or provider; public fields)."""
    return json_text(await explorer.address(runtime, address, limit=limit))


router = APIRouter(tags=["Explorer"])
for _prefix in PREFIXES:
    router.include_router(_routes, prefix=_prefix)
