"""What keeps web pages a user visits from reading their photos through `fusion serve`.

Any site can make the browser send requests to 127.0.0.1:8765, and with DNS rebinding (its
own name resolving to 127.0.0.1) read the answers. So: a request whose Host header is not an
address this server answers to is refused (a rebinding page sends its own name); no CORS
headers are ever sent (browsers then keep other origins from reading answers); and when the
server listens beyond this machine, every request needs a token, generated and printed like
Jupyter's unless given, carried by a cookie set when the printed URL is opened, by
`Authorization: Bearer`, or by `?token=`."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field

COOKIE = "fusion_token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Guard:
    hosts: set[str] | None  # allowed Host header values (lower case, with and without port); None: any
    token: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def for_address(cls, host: str, port: int, allow_hosts=(), token: str | None = None) -> "Guard":
        """Loopback: Host must be a loopback name (or an --allow-host), the token is optional.
        Any other address: a token is required (made here if not given); Host is checked
        against the address, loopback names and --allow-host, unless listening on all
        interfaces (0.0.0.0, ::) without --allow-host, where the token alone guards."""
        names = set(LOOPBACK_NAMES) | {h.lower() for h in allow_hosts}
        if is_loopback(host):
            return cls(_with_port(names | {host.lower()}, port), token)
        token = token or secrets.token_urlsafe(24)
        wildcard = host in ("0.0.0.0", "::", "[::]", "")
        if wildcard and not allow_hosts:
            return cls(None, token)
        return cls(_with_port(names | {host.lower()}, port), token)

    def host_ok(self, header: str | None) -> bool:
        return self.hosts is None or (header or "").lower() in self.hosts

    def token_ok(self, cookie: str | None, authorization: str | None, query: str | None) -> bool:
        if self.token is None:
            return True
        offered = [cookie, query]
        if authorization and authorization.lower().startswith("bearer "):
            offered.append(authorization[7:].strip())
        return any(o is not None and hmac.compare_digest(o.encode(), self.token.encode()) for o in offered)


def _with_port(names: set[str], port: int) -> set[str]:
    return {n for name in names for n in (name, f"{name}:{port}")}


def install(app, guard: Guard) -> None:
    """Check every request before it reaches a route."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        host = request.headers.get("host")
        if not guard.host_ok(host):
            return JSONResponse({"error": f"Host {host!r} is not an address this server answers to; "
                                          "start it with --allow-host NAME to allow that name"}, status_code=403)
        query_token = request.query_params.get("token")
        if not guard.token_ok(request.cookies.get(COOKIE), request.headers.get("authorization"), query_token):
            return JSONResponse({"error": "this server needs its token: open the URL `fusion serve` printed "
                                          "(…/?token=…) or send Authorization: Bearer TOKEN"}, status_code=401)
        response = await call_next(request)
        if guard.token is not None and query_token is not None:  # the printed URL: remember the token
            response.set_cookie(COOKIE, guard.token, httponly=True, samesite="strict")
        return response
