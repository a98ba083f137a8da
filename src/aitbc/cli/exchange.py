"""``aitbc exchange markets|book|ticker|trades|order|cancel|orders``: the AIT exchange
from the shell, on the SDK (``client.exchange``), with rich tables; ``--json`` on
every command for scripts. ``order`` places a limit order with ``--price``, a market
order without, and prints its status and fills.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from aitbc.cli.jobs import add_client_options
from aitbc.exchange_schemas import Order
from aitbc.sdk.client import Client
from aitbc.sdk.exchange import DEFAULT_MARKET


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def _print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    print(json.dumps(value, indent=2))


def _order_line(order: Order) -> str:
    price = "market" if order.price is None else f"@ {order.price:g}"
    return (
        f"{order.order_id} {order.side} {order.amount:g} AIT {price}: {order.status}, "
        f"filled {order.filled:g}, remaining {order.remaining:g}"
    )


def cmd_markets(args: argparse.Namespace) -> int:
    """Every market and its sizes and fees."""
    with _client(args) as client:
        markets = client.exchange.markets()
    if args.json:
        _print_json(markets)
        return 0
    table = Table("market", "tick", "lot", "maker fee", "taker fee")
    for m in markets:
        table.add_row(m.market, f"{m.tick_size:g}", f"{m.lot_size:g}", f"{m.maker_fee:g}",
                      f"{m.taker_fee:g}")  # fmt: skip
    Console().print(table)
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    """The order book: asks above, bids below, best prices next to each other."""
    with _client(args) as client:
        book = client.exchange.book(args.market, args.depth)
    if args.json:
        _print_json(book)
        return 0
    table = Table("side", "price", "amount (AIT)", title=f"{book.market} #{book.sequence}")
    for price, amount in reversed(book.asks):
        table.add_row("[red]ask[/red]", f"{price:g}", f"{amount:g}")
    for price, amount in book.bids:
        table.add_row("[green]bid[/green]", f"{price:g}", f"{amount:g}")
    Console().print(table)
    return 0


def cmd_ticker(args: argparse.Namespace) -> int:
    """Last price, best bid and ask, the last 24 hours."""
    with _client(args) as client:
        ticker = client.exchange.ticker(args.market)
    if args.json:
        _print_json(ticker)
        return 0

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    change = "-" if ticker.change_24h is None else f"{ticker.change_24h * 100:+.2f}%"
    Console().print(
        f"{ticker.market} last {show(ticker.last)}  bid {show(ticker.bid)}  "
        f"ask {show(ticker.ask)}  24h high {show(ticker.high_24h)} low {show(ticker.low_24h)} "
        f"volume {ticker.volume_24h:g} AIT change {change}",
        highlight=False,
    )
    return 0


def cmd_trades(args: argparse.Namespace) -> int:
    """A market's newest fills (``--mine``: yours)."""
    with _client(args) as client:
        trades = client.exchange.trades(args.market, limit=args.limit, mine=args.mine)
    if args.json:
        _print_json(trades)
        return 0
    table = Table("trade", "side", "price", "amount (AIT)", *(["fee"] if args.mine else []))
    for trade in trades:
        row = [trade["trade_id"], trade["side"], f"{trade['price']:g}", f"{trade['amount']:g}"]
        if args.mine:
            row.append(f"{trade['fee']:g}")
        table.add_row(*row)
    Console().print(table)
    return 0


def cmd_order(args: argparse.Namespace) -> int:
    """Place an order; print what became of it."""
    with _client(args) as client:
        order = client.exchange.order(
            args.side,
            args.amount,
            args.price,
            market=args.market,
            time_in_force=args.time_in_force,
        )
    if args.json:
        _print_json(order)
        return 0
    console = Console(highlight=False)
    console.print(_order_line(order))
    for fill in order.fills:
        console.print(
            f"  filled {fill.amount:g} AIT @ {fill.price:g} ({fill.liquidity}, fee {fill.fee:g} "
            f"AIT, {fill.quote_amount:g} quote) {fill.trade_id}"
        )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel one of your open orders."""
    with _client(args) as client:
        order = client.exchange.cancel(args.order_id)
    if args.json:
        _print_json(order)
    else:
        Console(highlight=False).print(_order_line(order))
    return 0


def cmd_orders(args: argparse.Namespace) -> int:
    """Your orders, newest first."""
    with _client(args) as client:
        page = client.exchange.orders(status=args.status, market=args.market, limit=args.limit)
    if args.json:
        _print_json(page)
        return 0
    table = Table("order", "side", "type", "price", "amount", "filled", "status")
    for order in page.orders:
        price = "-" if order.price is None else f"{order.price:g}"
        table.add_row(order.order_id, order.side, order.type, price, f"{order.amount:g}",
                      f"{order.filled:g}", order.status)  # fmt: skip
    Console().print(table)
    return 0


def cmd_deposit(args: argparse.Namespace) -> int:
    """Credit a quote asset to an account (the admin key)."""
    with _client(args) as client:
        deposit = client.exchange.deposit(args.address, args.amount, args.asset)
    if args.json:
        _print_json(deposit)
    else:
        Console(highlight=False).print(
            f"{deposit.deposit_id}: {deposit.amount:g} {deposit.asset} to {deposit.address}, "
            f"balance {deposit.balance:g}"
        )
    return 0


def add_parsers(commands: Any) -> None:
    """``aitbc exchange ...``."""
    exchange = commands.add_parser("exchange", help="trade AIT: the book, orders, fills")
    sub = exchange.add_subparsers(dest="exchange_command", required=True)
    markets = sub.add_parser("markets", help="markets with their sizes and fees")
    markets.set_defaults(handler=cmd_markets)
    book = sub.add_parser("book", help="the order book")
    book.add_argument("--depth", type=int, default=10)
    book.set_defaults(handler=cmd_book)
    ticker = sub.add_parser("ticker", help="last price and the last 24 hours")
    ticker.set_defaults(handler=cmd_ticker)
    trades = sub.add_parser("trades", help="newest fills")
    trades.add_argument("--limit", type=int, default=20)
    trades.add_argument("--mine", action="store_true", help="your own fills")
    trades.set_defaults(handler=cmd_trades)
    order = sub.add_parser("order", help="place an order (limit with --price, else market)")
    order.add_argument("side", choices=["buy", "sell"])
    order.add_argument("amount", help="AIT")
    order.add_argument("--price", help="quote per AIT (a limit order)")
    order.add_argument("--time-in-force", choices=["gtc", "ioc", "post_only"])
    order.set_defaults(handler=cmd_order)
    cancel = sub.add_parser("cancel", help="cancel one of your open orders")
    cancel.add_argument("order_id")
    cancel.set_defaults(handler=cmd_cancel)
    orders = sub.add_parser("orders", help="your orders, newest first")
    orders.add_argument(
        "--status",
        choices=["open", "closed", "partially_filled", "filled", "cancelled", "rejected"],
    )
    orders.add_argument("--limit", type=int, default=20)
    orders.set_defaults(handler=cmd_orders, market=None)
    deposit = sub.add_parser("deposit", help="credit USD (a quote asset) to an account (admin)")
    deposit.add_argument("address")
    deposit.add_argument("amount")
    deposit.add_argument("--asset", default="USD")
    deposit.set_defaults(handler=cmd_deposit)
    for parser in (markets, book, ticker, trades, order, cancel, orders, deposit):
        add_client_options(parser)
        parser.add_argument("--json", action="store_true", help="print JSON")
        if parser not in (markets, cancel, deposit):
            parser.add_argument("--market", default=None if parser is orders else DEFAULT_MARKET)
