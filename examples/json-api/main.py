"""Prices an order: {"sku": "A-100", "qty": 2} -> {"total": "39.98", ...}."""

import datetime
import decimal
import re

SKU = re.compile(r"^[A-Z]-\d{3}$")
PRICES = {f"{letter}-{n:03d}": decimal.Decimal(n) / 5 for letter in "ABC" for n in range(100, 200)}


def handler(event, context):
    if not isinstance(event, dict):
        raise ValueError("the event must be a JSON object")
    sku, qty = event.get("sku", ""), int(event.get("qty", 1))
    if not SKU.match(sku) or sku not in PRICES:
        raise KeyError(f"unknown sku {sku!r}")
    total = (PRICES[sku] * qty).quantize(decimal.Decimal("0.01"))
    return {
        "sku": sku,
        "qty": qty,
        "total": str(total),
        "priced_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
