"""The compute marketplace (DESIGN.md section 7): miners' offers of capacity and the
trades that buy it (jobs then name the ``trade_id``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from aitbc.api.deps import PrincipalDep, RuntimeDep
from aitbc.api.responses import JSONDocument
from aitbc.market_schemas import (
    Offer,
    OfferList,
    OfferRequest,
    OfferUpdate,
    Trade,
    TradeList,
    TradeRequest,
)
from aitbc.services import marketplace

router = APIRouter(prefix="/v1/marketplace", tags=["Marketplace"])

ItemId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_]+$")]


@router.post("/offers", status_code=201, response_model=Offer)
async def create_offer(
    runtime: RuntimeDep, principal: PrincipalDep, body: OfferRequest
) -> JSONDocument:
    """Offer capacity (miner key): tokens of these models at this price, until then."""
    return JSONDocument(await marketplace.create_offer(runtime, principal, body), status_code=201)


@router.get("/offers", response_model=OfferList)
async def list_offers(
    runtime: RuntimeDep,
    model: Annotated[str | None, Query(max_length=200)] = None,
    gpu_type: Annotated[str | None, Query(max_length=100)] = None,
    min_vram_gb: Annotated[float | None, Query(ge=0)] = None,
    max_price: Annotated[float | None, Query(ge=0)] = None,
    region: Annotated[str | None, Query(max_length=64)] = None,
    miner_id: Annotated[str | None, Query(max_length=128)] = None,
    include_closed: bool = False,
    sort: Literal["price", "-price", "created"] = "price",
    limit: Annotated[int, Query(ge=1, le=marketplace.MAX_OFFERS_PAGE)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> JSONDocument:
    """Open offers (all with ``include_closed``), filtered, cheapest first by default."""
    return JSONDocument(
        await marketplace.list_offers(
            runtime,
            model=model,
            gpu_type=gpu_type,
            min_vram_gb=min_vram_gb,
            max_price=max_price,
            region=region,
            miner_id=miner_id,
            include_closed=include_closed,
            sort=sort,
            limit=limit,
            offset=offset,
        )
    )


@router.get("/offers/{offer_id}", response_model=Offer)
async def get_offer(runtime: RuntimeDep, offer_id: ItemId) -> JSONDocument:
    """One offer."""
    return JSONDocument(await marketplace.get_offer(runtime, offer_id))


@router.patch("/offers/{offer_id}", response_model=Offer)
async def update_offer(
    runtime: RuntimeDep, principal: PrincipalDep, offer_id: ItemId, body: OfferUpdate
) -> JSONDocument:
    """Change your offer (its miner's key)."""
    return JSONDocument(await marketplace.update_offer(runtime, principal, offer_id, body))


@router.delete("/offers/{offer_id}", response_model=Offer)
async def withdraw_offer(
    runtime: RuntimeDep, principal: PrincipalDep, offer_id: ItemId
) -> JSONDocument:
    """Withdraw your offer: no new trades (those made go on)."""
    return JSONDocument(await marketplace.withdraw_offer(runtime, principal, offer_id))


@router.post("/trades", status_code=201, response_model=Trade)
async def buy(runtime: RuntimeDep, principal: PrincipalDep, body: TradeRequest) -> JSONDocument:
    """Buy capacity (client key): the amount goes into escrow, the tokens are yours."""
    return JSONDocument(await marketplace.buy(runtime, principal, body), status_code=201)


@router.get("/trades", response_model=TradeList)
async def list_trades(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JSONDocument:
    """Your trades, newest first."""
    return JSONDocument(await marketplace.list_trades(runtime, principal, limit))


@router.get("/trades/{trade_id}", response_model=Trade)
async def get_trade(runtime: RuntimeDep, principal: PrincipalDep, trade_id: ItemId) -> JSONDocument:
    """A trade, for its buyer, its miner or an admin."""
    return JSONDocument(await marketplace.get_trade(runtime, principal, trade_id))
