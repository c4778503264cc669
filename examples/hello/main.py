"""Hello world for thaw: greets `event["name"]` and shows the context."""

import os

import thaw

GREETING = os.environ.get("GREETING", "hello")


def handler(event, context):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    return {
        GREETING: name,
        "invocation_id": context.invocation_id,
        "function": context.function,
        "version": context.version,
        "remaining_ms": context.remaining_ms(),
        "restored_copy": thaw.is_copy(),
    }
