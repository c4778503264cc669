"""Helpers for functions that run on thaw.

Import it from a handler module::

    import thaw

    @thaw.on_restore
    def reconnect():
        ...  # runs in every copy restored from a snapshot, before its first request

    def handler(event, context):
        return thaw.Response({"created": True}, status=201, headers={"x-id": "7"})

The thaw Python runtime (``bootstrap.py``) imports this same module, reads the
hooks registered here and sets the copy flag; nothing in it starts threads or
touches the runtime's protocol channel.
"""

__all__ = ["Response", "on_restore", "is_copy"]

# Hooks registered with on_restore(), run in this order after each restore.
_restore_hooks = []

# Set by the runtime once it has handled a `restored` message.
_is_copy = False


class Response:
    """An answer with an explicit HTTP status and headers.

    ``body`` follows the same rules as a plain return value: ``bytes`` are sent
    as ``application/octet-stream``, ``str`` as ``text/plain; charset=utf-8``,
    anything else as JSON; ``None`` means an empty body. ``headers`` override
    the default ``content-type``; names are sent lower-cased.
    """

    __slots__ = ("body", "status", "headers")

    def __init__(self, body=None, status=200, headers=None):
        self.body = body
        self.status = status
        self.headers = dict(headers) if headers else {}

    def __repr__(self):
        return "Response(status=%r, headers=%r, body=%r)" % (
            self.status,
            self.headers,
            self.body,
        )


def on_restore(fn):
    """Registers ``fn()`` to run in every copy restored from a snapshot.

    Hooks run in registration order, after the runtime has reseeded its random
    generators and before the copy serves its first request. A hook that raises
    makes thaw discard the copy. Returns ``fn``, so it works as a decorator.
    """
    if not callable(fn):
        raise TypeError("on_restore() needs a callable, not %r" % (fn,))
    _restore_hooks.append(fn)
    return fn


def is_copy():
    """True in a process restored from a snapshot, False in the original."""
    return _is_copy
