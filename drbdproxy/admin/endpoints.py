"""Server endpoint strings of the daemon's own services (metrics, manhole): checked at start-up."""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints


def endpoint_description(endpoint: str) -> str:
    """The endpoint string to listen on: a bare port number means that port on loopback."""
    endpoint = endpoint.strip()
    if endpoint.isdigit():
        return f"tcp:{endpoint}:interface=127.0.0.1"
    return endpoint


def check_endpoint(endpoint: str, what: str, example: str, error: type[Exception],
                   reactor: Any = None) -> str:
    """The endpoint description, after checking that it parses (it does not listen).

    :raises error: an empty or unparsable endpoint string, naming ``what`` it was for.
    """
    if reactor is None:
        from twisted.internet import reactor
    description = endpoint_description(endpoint)
    if not description:
        raise error(f"{what} endpoint is empty (e.g. {example})")
    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise error(f"bad {what} endpoint {endpoint!r}: {e}") from None
    return description
