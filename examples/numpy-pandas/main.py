"""numpy + pandas function for thaw.

At import it builds a deterministic table of 1.5 million sales (four 8-byte
columns, 48 MB) ordered by store, and a per-store summary. Each request
answers a small query about one store, e.g.
``{"store": 7, "column": "price", "min": 100.0}``: how many of the store's
sales reach ``min`` in ``column`` and their mean, with the store's summary.
A query reads about 15,000 rows (a few hundred KB of the table) and takes
well under a millisecond once warm.

The answer echoes the query and says whether this process is a restored copy.
"""

import numpy as np
import pandas as pd

import thaw

N_ROWS = 1_500_000
N_STORES = 100
SEED = 20_240_601
COLUMNS = ("price", "qty", "discount")


def build_table():
    rng = np.random.default_rng(SEED)
    return pd.DataFrame(
        {
            # Sorted, so each store's sales are one contiguous slice.
            "store": np.sort(rng.integers(0, N_STORES, N_ROWS, dtype=np.int64)),
            "price": rng.gamma(2.0, 50.0, N_ROWS),
            "qty": rng.integers(1, 50, N_ROWS, dtype=np.int64),
            "discount": rng.uniform(0.0, 0.3, N_ROWS),
        }
    )


SALES = build_table()
# Row range of store s: STARTS[s] .. STARTS[s + 1].
STARTS = np.searchsorted(SALES["store"].to_numpy(), np.arange(N_STORES + 1))
BY_STORE = (
    SALES.assign(revenue=SALES["price"] * SALES["qty"] * (1.0 - SALES["discount"]))
    .groupby("store")
    .agg(rows=("price", "size"), revenue=("revenue", "sum"), mean_price=("price", "mean"))
)


def bad_request(message):
    return thaw.Response({"error": message}, status=400)


def handler(event, context):
    query = event if isinstance(event, dict) else {}
    store = query.get("store", 0)
    column = query.get("column", "price")
    minimum = query.get("min", 0.0)
    if isinstance(store, bool) or not isinstance(store, int) or not 0 <= store < N_STORES:
        return bad_request("store must be an integer in 0..%d" % (N_STORES - 1))
    if column not in COLUMNS:
        return bad_request("column must be one of %s" % ", ".join(COLUMNS))
    if isinstance(minimum, bool) or not isinstance(minimum, (int, float)):
        return bad_request("min must be a number")

    values = SALES[column].to_numpy()[STARTS[store] : STARTS[store + 1]]
    mask = values >= minimum
    matched = int(np.count_nonzero(mask))
    summary = BY_STORE.loc[store]
    return {
        "rows": len(SALES),
        "query": query,
        "store_rows": int(summary["rows"]),
        "matched": matched,
        "mean": float(values[mask].mean()) if matched else None,
        "store_revenue": round(float(summary["revenue"]), 2),
        "store_mean_price": round(float(summary["mean_price"]), 4),
        "restored_copy": thaw.is_copy(),
    }
