"""``aitbc market offers|offer|withdraw|buy|trade|trades``: the compute marketplace from
the shell, on the SDK (``client.market``). ``offers`` lists open offers (cheapest
first); ``offer`` posts one (a miner key); ``buy`` buys tokens of one (a client key)
and prints the trade id that jobs then name (``aitbc jobs submit ... --trade ID``).
``--json`` on every command.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from aitbc.cli.jobs import add_client_options
from aitbc.market_schemas import Trade
from aitbc.sdk.client import Client


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def _print_json(value: BaseModel) -> None:
    print(json.dumps(value.model_dump(mode="json"), indent=2))


def _trade_line(trade: Trade) -> str:
    return (
        f"{trade.trade_id}: {trade.tokens} tokens of {trade.miner_id} at {trade.price:g} AIT "
        f"per 1,000 ({trade.amount:g} AIT), used {trade.used_tokens}, paid {trade.paid:g}, "
        f"{trade.status} until {trade.expires_at:%Y-%m-%d %H:%M} UTC"
    )


def cmd_offers(args: argparse.Namespace) -> int:
    """Open offers, cheapest first."""
    with _client(args) as client:
        page = client.market.offers(
            model=args.model,
            gpu_type=args.gpu_type,
            min_vram_gb=args.min_vram_gb,
            max_price=args.max_price,
            region=args.region,
            sort=args.sort,
            limit=args.limit,
        )
    if args.json:
        _print_json(page)
        return 0
    table = Table("offer", "miner", "models", "price", "tokens left", "gpu", "region", "until")
    for o in page.offers:
        gpu = " ".join(str(x) for x in (o.gpu_count, o.gpu_type, o.vram_gb and f"{o.vram_gb:g} GB")
                       if x) or "-"  # fmt: skip
        table.add_row(o.offer_id, o.miner_id, ", ".join(o.models), f"{o.price:g}",
                      str(o.remaining_tokens), gpu, o.region or "-",
                      f"{o.valid_until:%Y-%m-%d %H:%M}")  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"{len(page.offers)} of {page.total}")
    return 0


def cmd_offer(args: argparse.Namespace) -> int:
    """Post an offer (a miner key)."""
    valid_until = datetime.now(UTC) + timedelta(hours=args.hours)
    hardware: dict[str, Any] = {
        "gpu_type": args.gpu_type,
        "gpu_count": args.gpu_count,
        "vram_gb": args.vram_gb,
        "region": args.region,
    }
    with _client(args) as client:
        offer = client.market.create_offer(
            args.miner_id, args.model, args.price, args.tokens, valid_until, **hardware
        )
    if args.json:
        _print_json(offer)
    else:
        Console(highlight=False).print(
            f"{offer.offer_id}: {offer.capacity_tokens} tokens of {', '.join(offer.models)} at "
            f"{offer.price:g} AIT per 1,000, until {offer.valid_until:%Y-%m-%d %H:%M} UTC"
        )
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    """Withdraw one of your offers."""
    with _client(args) as client:
        offer = client.market.withdraw(args.offer_id)
    if args.json:
        _print_json(offer)
    else:
        Console(highlight=False).print(f"{offer.offer_id}: {offer.status}")
    return 0


def cmd_buy(args: argparse.Namespace) -> int:
    """Buy tokens of an offer."""
    with _client(args) as client:
        trade = client.market.buy(args.offer_id, args.tokens)
    if args.json:
        _print_json(trade)
    else:
        Console(highlight=False).print(_trade_line(trade))
    return 0


def cmd_trade(args: argparse.Namespace) -> int:
    """One of your trades."""
    with _client(args) as client:
        trade = client.market.trade(args.trade_id)
    if args.json:
        _print_json(trade)
    else:
        Console(highlight=False).print(_trade_line(trade))
    return 0


def cmd_trades(args: argparse.Namespace) -> int:
    """Your trades, newest first."""
    with _client(args) as client:
        page = client.market.trades(args.limit)
    if args.json:
        _print_json(page)
        return 0
    console = Console(highlight=False)
    for trade in page.trades:
        console.print(_trade_line(trade))
    return 0


def add_parsers(commands: Any) -> None:
    """``aitbc market ...``."""
    market = commands.add_parser("market", help="buy and offer compute capacity")
    sub = market.add_subparsers(dest="market_command", required=True)
    offers = sub.add_parser("offers", help="open offers, cheapest first")
    offers.add_argument("--model")
    offers.add_argument("--gpu-type")
    offers.add_argument("--min-vram-gb", type=float)
    offers.add_argument("--max-price", type=float, help="AIT per 1,000 tokens at most")
    offers.add_argument("--region")
    offers.add_argument("--sort", choices=["price", "-price", "created"], default="price")
    offers.add_argument("--limit", type=int, default=20)
    offers.set_defaults(handler=cmd_offers)
    offer = sub.add_parser("offer", help="offer capacity (a miner key)")
    offer.add_argument("--miner-id", required=True)
    offer.add_argument("--model", action="append", required=True, help="repeat for more")
    offer.add_argument("--price", required=True, help="AIT per 1,000 tokens")
    offer.add_argument("--tokens", type=int, required=True, help="capacity in tokens")
    offer.add_argument("--hours", type=float, default=24.0, help="valid for (default 24)")
    offer.add_argument("--gpu-type")
    offer.add_argument("--gpu-count", type=int)
    offer.add_argument("--vram-gb", type=float)
    offer.add_argument("--region")
    offer.set_defaults(handler=cmd_offer)
    withdraw = sub.add_parser("withdraw", help="withdraw one of your offers")
    withdraw.add_argument("offer_id")
    withdraw.set_defaults(handler=cmd_withdraw)
    buy = sub.add_parser("buy", help="buy tokens of an offer (a client key)")
    buy.add_argument("offer_id")
    buy.add_argument("tokens", type=int)
    buy.set_defaults(handler=cmd_buy)
    trade = sub.add_parser("trade", help="one of your trades")
    trade.add_argument("trade_id")
    trade.set_defaults(handler=cmd_trade)
    trades = sub.add_parser("trades", help="your trades, newest first")
    trades.add_argument("--limit", type=int, default=20)
    trades.set_defaults(handler=cmd_trades)
    for parser in (offers, offer, withdraw, buy, trade, trades):
        add_client_options(parser)
        parser.add_argument("--json", action="store_true", help="print JSON")
