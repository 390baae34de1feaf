"""The address of the client behind a request, for logs and limits.

The service runs behind the nginx sidecar, which connects from loopback and appends the address it
saw to `X-Forwarded-For`. That header is believed only when the connection comes from loopback, and
then only from the right: the entries a client wrote itself are to the left of the ones our proxies
appended, so the right-most address that is not a proxy of ours is the client. Anyone else who sends
the header is ignored and known by the address of their connection.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

from aiohttp import web


def client_ip(request: web.BaseRequest) -> str | None:
    """The client's address: from `X-Forwarded-For` when the sidecar sent the request, else the peer's."""
    return client_address(request.remote, request.headers.get("X-Forwarded-For"))


def client_address(remote: str | None, forwarded_for: str | None) -> str | None:
    """The right-most address in `forwarded_for` that is not loopback, when `remote` is loopback.

    Without a trusted `remote`, or a usable header, the answer is `remote` itself. A chain of
    loopback proxies only (a request made on the host) gives its left-most address; an entry that
    is not an IP address stops the walk, since nothing left of it was written by a proxy we trust.
    """
    if not forwarded_for or not _is_loopback(remote):
        return remote
    address = None
    for hop in reversed(forwarded_for.split(",")):
        address = _parse(hop.strip())
        if address is None:
            return remote
        if not address.is_loopback:
            return str(address)
    return str(address)


def _is_loopback(remote: str | None) -> bool:
    address = _parse(remote or "")
    return address is not None and address.is_loopback


def _parse(text: str) -> IPv4Address | IPv6Address | None:
    """An IP address, with IPv4-mapped IPv6 (`::ffff:127.0.0.1`) read as the IPv4 address it is."""
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
