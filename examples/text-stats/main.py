"""Counts words: {"text": "..."} -> the most common words and length statistics."""

import collections
import re
import statistics
import unicodedata

WORD = re.compile(r"\w+", re.UNICODE)


def handler(event, context):
    text = event.get("text", "") if isinstance(event, dict) else (event or b"").decode("utf-8", "replace")
    text = unicodedata.normalize("NFKC", text).lower()
    words = WORD.findall(text)
    lengths = [len(w) for w in words] or [0]
    return {
        "words": len(words),
        "common": collections.Counter(words).most_common(5),
        "mean_length": round(statistics.fmean(lengths), 3),
    }
