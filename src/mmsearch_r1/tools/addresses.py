"""Which IP addresses untrusted URLs (result pages, thumbnails) may reach: globally routable unicast only.

What it does: `is_public_address(ip, allowed)` is true only when the address is globally routable
unicast, or lies in one of the `allowed` networks (tests allow ``127.0.0.0/8``). IPv6 addresses that
carry an IPv4 address are unwrapped and the IPv4 address must be global too: IPv4-mapped
``::ffff:0:0/96`` (checked as the IPv4 address itself), 6to4 ``2002::/16``, Teredo ``2001::/32`` and
NAT64 ``64:ff9b::/96`` (allowed when the embedded IPv4 address is global, since a NAT64 network
reaches every IPv4-only site that way). The base test is `ipaddress`'s ``is_global``; because its
tables depend on the Python version (3.11.7 calls 192.0.0.8, fec0::1 and 64:ff9b:1::1 global), the
IANA special-purpose blocks that are not globally reachable are also refused explicitly, multicast is
refused, and IPv6 must lie in the global unicast block ``2000::/3``.

What it does not: no DNS. `net.SafeHttp.check_url` resolves each host and calls this on every
address of every redirect hop.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address

_GLOBAL_UNICAST_V6 = ip_network("2000::/3")
_NAT64 = ip_network("64:ff9b::/96")
_NOT_GLOBAL = [
    ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT (cloud metadata such as 100.100.100.200 lives here)
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments (192.0.0.8 and friends)
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
        "2001::/23",  # IETF protocol assignments, Teredo included
        "2001:db8::/32",
        "3fff::/20",  # documentation (RFC 9637)
    )
]


def embedded_ipv4(ip: IPAddress) -> list[IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo server and client, NAT64)."""
    if not isinstance(ip, IPv6Address):
        return []
    out = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if ip in _NAT64:
        out.append(IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def _global(ip: IPAddress) -> bool:
    if ip.is_multicast or not ip.is_global or any(ip in n for n in _NOT_GLOBAL):
        return False
    return isinstance(ip, IPv4Address) or ip in _GLOBAL_UNICAST_V6


def is_public_address(ip: IPAddress | str, allowed: Iterable[IPv4Network | IPv6Network] = ()) -> bool:
    """True when `ip` may be contacted for an untrusted URL (see the module docstring)."""
    ip = ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in n for n in allowed):
        return True
    inner = embedded_ipv4(ip)
    if isinstance(ip, IPv6Address) and ip in _NAT64:
        return all(_global(a) for a in inner)
    return _global(ip) and all(_global(a) for a in inner)


__all__ = ["embedded_ipv4", "is_public_address"]
