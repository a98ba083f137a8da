"""Request and response bodies of the compute marketplace (DESIGN.md section 7):
offers of capacity by miners and the trades that buy it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, Field

from aitbc.schemas import MINER_ID_PATTERN, StrictRequest

Price = Annotated[Decimal, Field(ge=0, le=10**6, decimal_places=6)]
Tokens = Annotated[int, Field(ge=1, le=10**12)]
ModelName = Annotated[str, Field(min_length=1, max_length=200)]


class OfferRequest(StrictRequest):
    """``POST /v1/marketplace/offers`` (miner key)."""

    miner_id: str = Field(pattern=MINER_ID_PATTERN)
    models: list[ModelName] = Field(min_length=1, max_length=50)
    price: Price = Field(description="AIT per 1,000 tokens")
    capacity_tokens: Tokens
    valid_until: AwareDatetime
    gpu_type: str | None = Field(default=None, max_length=100)
    gpu_count: int | None = Field(default=None, ge=0, le=1024)
    vram_gb: float | None = Field(default=None, ge=0, le=100_000)
    region: str | None = Field(default=None, max_length=64)


class OfferUpdate(StrictRequest):
    """``PATCH /v1/marketplace/offers/{offer_id}`` (its miner): what changes."""

    models: list[ModelName] | None = Field(default=None, min_length=1, max_length=50)
    price: Price | None = None
    capacity_tokens: Tokens | None = None
    valid_until: AwareDatetime | None = None
    gpu_type: str | None = Field(default=None, max_length=100)
    gpu_count: int | None = Field(default=None, ge=0, le=1024)
    vram_gb: float | None = Field(default=None, ge=0, le=100_000)
    region: str | None = Field(default=None, max_length=64)


class Offer(BaseModel):
    """An offer as everyone sees it."""

    offer_id: str
    miner_id: str
    models: list[str]
    price: float
    capacity_tokens: int
    remaining_tokens: int
    valid_until: datetime
    gpu_type: str | None
    gpu_count: int | None
    vram_gb: float | None
    region: str | None
    status: Literal["open", "sold_out", "withdrawn", "expired"]
    created_at: datetime


class OfferList(BaseModel):
    """``GET /v1/marketplace/offers``: one page."""

    offers: list[Offer]
    total: int
    has_more: bool


class TradeRequest(StrictRequest):
    """``POST /v1/marketplace/trades`` (client key): buy ``tokens`` of an offer."""

    offer_id: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_]+$")
    tokens: Tokens


class Trade(BaseModel):
    """A trade: capacity bought, what its jobs used and paid, what was refunded."""

    trade_id: str
    offer_id: str
    client: str
    miner_id: str
    models: list[str]
    tokens: int
    price: float
    amount: float
    used_tokens: int
    paid: float
    reserved: float
    refunded: float
    status: Literal["active", "expired"]
    expires_at: datetime
    created_at: datetime


class TradeList(BaseModel):
    """``GET /v1/marketplace/trades``: the caller's trades, newest first."""

    trades: list[Trade]
