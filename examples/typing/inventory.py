"""A small inventory ledger: items, stock movements, valuation and reorder reports.

Stock moves are recorded as an append-only ledger; the current quantity of an item is the sum of its
moves. Valuation uses the weighted average cost of the receipts. The module has no dependencies beyond
the standard library, reads and writes CSV, and prints plain-text reports.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from typing import Iterable, Iterator


class MoveKind(Enum):
    RECEIPT = "receipt"
    SHIPMENT = "shipment"
    ADJUSTMENT = "adjustment"
    RETURN = "return"


class LedgerError(ValueError):
    """Raised when a move would make the ledger inconsistent."""


@dataclass(frozen=True)
class Item:
    sku: str
    name: str
    unit: str = "pcs"
    reorder_point: int = 0
    reorder_quantity: int = 0

    def __post_init__(self) -> None:
        if not self.sku or not self.sku.strip():
            raise ValueError("an item needs a SKU")
        if self.reorder_point < 0 or self.reorder_quantity < 0:
            raise ValueError(f"{self.sku}: reorder values cannot be negative")


@dataclass(frozen=True)
class Move:
    sku: str
    kind: MoveKind
    quantity: int
    date: dt.date
    unit_cost: Decimal = Decimal("0")
    reference: str = ""

    @property
    def signed_quantity(self) -> int:
        if self.kind in (MoveKind.RECEIPT, MoveKind.RETURN):
            return self.quantity
        if self.kind is MoveKind.SHIPMENT:
            return -self.quantity
        return self.quantity  # adjustments carry their own sign


@dataclass
class Ledger:
    items: dict[str, Item] = field(default_factory=dict)
    moves: list[Move] = field(default_factory=list)

    def add_item(self, item: Item) -> None:
        if item.sku in self.items:
            raise LedgerError(f"duplicate SKU {item.sku}")
        self.items[item.sku] = item

    def item(self, sku: str) -> Item:
        try:
            return self.items[sku]
        except KeyError:
            raise LedgerError(f"unknown SKU {sku}") from None

    def record(self, move: Move) -> None:
        self.item(move.sku)
        if move.kind is not MoveKind.ADJUSTMENT and move.quantity <= 0:
            raise LedgerError(f"{move.sku}: {move.kind.value} quantity must be positive")
        if move.kind is MoveKind.RECEIPT and move.unit_cost < 0:
            raise LedgerError(f"{move.sku}: unit cost cannot be negative")
        on_hand = self.on_hand(move.sku, until=move.date)
        if on_hand + move.signed_quantity < 0:
            raise LedgerError(
                f"{move.sku}: cannot ship {move.quantity} on {move.date}, only {on_hand} on hand"
            )
        self.moves.append(move)

    def moves_for(self, sku: str) -> Iterator[Move]:
        return (m for m in self.moves if m.sku == sku)

    def on_hand(self, sku: str, until: dt.date | None = None) -> int:
        total = 0
        for move in self.moves_for(sku):
            if until is not None and move.date > until:
                continue
            total += move.signed_quantity
        return total

    def average_cost(self, sku: str) -> Decimal:
        quantity = 0
        cost = Decimal("0")
        for move in self.moves_for(sku):
            if move.kind is MoveKind.RECEIPT:
                quantity += move.quantity
                cost += move.unit_cost * move.quantity
        if quantity == 0:
            return Decimal("0")
        return (cost / quantity).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)

    def value(self, sku: str) -> Decimal:
        return (self.average_cost(sku) * self.on_hand(sku)).quantize(Decimal("0.01"))

    def total_value(self) -> Decimal:
        return sum((self.value(sku) for sku in self.items), Decimal("0"))

    def needs_reorder(self) -> list[Item]:
        return [
            item
            for item in self.items.values()
            if item.reorder_quantity > 0 and self.on_hand(item.sku) <= item.reorder_point
        ]


def shipped_per_month(ledger: Ledger, sku: str) -> dict[str, int]:
    months: dict[str, int] = defaultdict(int)
    for move in ledger.moves_for(sku):
        if move.kind is MoveKind.SHIPMENT:
            months[move.date.strftime("%Y-%m")] += move.quantity
    return dict(sorted(months.items()))


def days_of_cover(ledger: Ledger, sku: str, today: dt.date, window_days: int = 90) -> float | None:
    """How many days the stock on hand lasts at the average daily shipments of the last window."""
    start = today - dt.timedelta(days=window_days)
    shipped = sum(
        m.quantity
        for m in ledger.moves_for(sku)
        if m.kind is MoveKind.SHIPMENT and start < m.date <= today
    )
    if shipped == 0:
        return None
    per_day = shipped / window_days
    return round(ledger.on_hand(sku, until=today) / per_day, 1)


def reorder_suggestions(ledger: Ledger, today: dt.date, lead_time_days: int = 14) -> list[tuple[Item, int]]:
    suggestions = []
    for item in ledger.items.values():
        cover = days_of_cover(ledger, item.sku, today)
        on_hand = ledger.on_hand(item.sku, until=today)
        below_point = item.reorder_quantity > 0 and on_hand <= item.reorder_point
        running_out = cover is not None and cover < lead_time_days
        if below_point or running_out:
            quantity = max(item.reorder_quantity, item.reorder_point - on_hand + 1)
            suggestions.append((item, quantity))
    suggestions.sort(key=lambda pair: pair[0].sku)
    return suggestions


ITEM_FIELDS = ["sku", "name", "unit", "reorder_point", "reorder_quantity"]
MOVE_FIELDS = ["sku", "kind", "quantity", "date", "unit_cost", "reference"]


def read_items(text: str) -> list[Item]:
    reader = csv.DictReader(io.StringIO(text))
    missing = set(ITEM_FIELDS[:2]) - set(reader.fieldnames or [])
    if missing:
        raise LedgerError(f"items file lacks columns: {', '.join(sorted(missing))}")
    items = []
    for line, row in enumerate(reader, start=2):
        try:
            items.append(
                Item(
                    sku=row["sku"].strip(),
                    name=row["name"].strip(),
                    unit=(row.get("unit") or "pcs").strip(),
                    reorder_point=int(row.get("reorder_point") or 0),
                    reorder_quantity=int(row.get("reorder_quantity") or 0),
                )
            )
        except ValueError as err:
            raise LedgerError(f"items line {line}: {err}") from err
    return items


def read_moves(text: str) -> list[Move]:
    reader = csv.DictReader(io.StringIO(text))
    moves = []
    for line, row in enumerate(reader, start=2):
        try:
            moves.append(
                Move(
                    sku=row["sku"].strip(),
                    kind=MoveKind(row["kind"].strip().lower()),
                    quantity=int(row["quantity"]),
                    date=dt.date.fromisoformat(row["date"].strip()),
                    unit_cost=Decimal(row.get("unit_cost") or "0"),
                    reference=(row.get("reference") or "").strip(),
                )
            )
        except (KeyError, ValueError, ArithmeticError) as err:
            raise LedgerError(f"moves line {line}: {err}") from err
    moves.sort(key=lambda m: m.date)
    return moves


def load_ledger(items_csv: str, moves_csv: str) -> Ledger:
    ledger = Ledger()
    for item in read_items(items_csv):
        ledger.add_item(item)
    for move in read_moves(moves_csv):
        ledger.record(move)
    return ledger


def write_moves(moves: Iterable[Move]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=MOVE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for m in moves:
        writer.writerow(
            {
                "sku": m.sku,
                "kind": m.kind.value,
                "quantity": m.quantity,
                "date": m.date.isoformat(),
                "unit_cost": str(m.unit_cost),
                "reference": m.reference,
            }
        )
    return out.getvalue()


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    return "\n".join(lines)


def stock_report(ledger: Ledger, today: dt.date) -> str:
    rows = []
    for sku in sorted(ledger.items):
        item = ledger.items[sku]
        cover = days_of_cover(ledger, sku, today)
        rows.append(
            [
                sku,
                item.name,
                f"{ledger.on_hand(sku, until=today)} {item.unit}",
                f"{ledger.average_cost(sku):.2f}",
                f"{ledger.value(sku):.2f}",
                "-" if cover is None else f"{cover:.0f} d",
            ]
        )
    table = format_table(["SKU", "Item", "On hand", "Avg cost", "Value", "Cover"], rows)
    return f"{table}\n\nTotal value: {ledger.total_value():.2f}"


def reorder_report(ledger: Ledger, today: dt.date) -> str:
    suggestions = reorder_suggestions(ledger, today)
    if not suggestions:
        return "Nothing to reorder."
    rows = [[item.sku, item.name, f"{quantity} {item.unit}"] for item, quantity in suggestions]
    return format_table(["SKU", "Item", "Order"], rows)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", help="CSV file of items")
    parser.add_argument("moves", help="CSV file of stock moves")
    parser.add_argument("--date", type=dt.date.fromisoformat, default=dt.date.today())
    parser.add_argument("--reorder", action="store_true", help="print what to reorder")
    args = parser.parse_args(argv)
    try:
        with open(args.items, encoding="utf-8") as f_items, open(args.moves, encoding="utf-8") as f_moves:
            ledger = load_ledger(f_items.read(), f_moves.read())
    except (OSError, LedgerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(reorder_report(ledger, args.date) if args.reorder else stock_report(ledger, args.date))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
