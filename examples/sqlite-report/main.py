"""Sales by product for a region, from an in-memory SQLite database built at init."""

import random
import sqlite3

DB = sqlite3.connect(":memory:", check_same_thread=False)
DB.execute("CREATE TABLE sales (region TEXT, product TEXT, amount REAL)")
_rng = random.Random(42)
DB.executemany(
    "INSERT INTO sales VALUES (?, ?, ?)",
    (
        (_rng.choice(["north", "south", "east", "west"]), f"p{_rng.randrange(50)}", _rng.random() * 100)
        for _ in range(100_000)
    ),
)
DB.execute("CREATE INDEX by_region ON sales (region)")


def handler(event, context):
    region = (event or {}).get("region", "north")
    rows = DB.execute(
        "SELECT product, ROUND(SUM(amount), 2) FROM sales WHERE region = ? "
        "GROUP BY product ORDER BY 2 DESC LIMIT 5",
        (region,),
    ).fetchall()
    return {"region": region, "top": [{"product": p, "total": t} for p, t in rows]}
