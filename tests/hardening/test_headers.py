"""Spoofed identity, hop-by-hop, override and credential headers: none reach the upstream."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.support import RecordingUpstream, RunningGateway, raw_request, unique

SPOOFED = [
    "X-Gateway-User-Id",
    "x-gateway-user-id",
    "X-GATEWAY-USER-ID",
    "X_Gateway_User_Id",
    "x_gateway_scopes",
    "X-Gateway_Key-Id",
    "X-Gateway-Auth",
    "X-Gateway-Anything",
]
DROPPED = [
    "Connection",
    "Keep-Alive",
    "Proxy-Authorization",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Upgrade",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X_HTTP_Method_Override",
    "X-API-Key",
    "X_API_Key",
    "Authorization",
    "Forwarded",
    # Client-address headers: the upstream gets X-Real-IP from the gateway, none of these.
    "X-Real-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "Client-IP",
]


async def test_header_battery(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    user = unique("user")
    key = (await gateway.create_key(user, ["me:read"]))["key"]
    port = urlsplit(gateway.proxy).port
    assert port is not None
    forged = 0
    for name in SPOOFED + DROPPED:
        for connection in ("keep-alive", f"close, {name}", "X-Gateway-User-Id, X-Gateway-Scopes"):
            headers = [
                ("Host", "x"),
                ("X-API-Key", key),
                (name, "spoofed"),
                ("Connection", connection),
            ]
            if name.lower() in ("x-api-key", "x_api_key"):
                headers = [("Host", "x"), ("Authorization", f"Bearer {key}"), (name, "spoofed")]
            if name.lower() == "authorization":
                headers = [("Host", "x"), ("X-API-Key", key), (name, f"Bearer {key}")]
            if name.lower() == "upgrade":
                headers.append(("Upgrade", "h2c"))
            head = "".join(f"{k}: {v}\r\n" for k, v in headers)
            answer = await raw_request(port, f"GET /v1/me HTTP/1.1\r\n{head}\r\n".encode())
            assert answer.split(b" ", 2)[1] in (b"200", b"401"), answer[:60]
            forged += 1
    for received in upstream.received:
        names = {n.lower().replace("_", "-") for n in received.headers}
        assert received.headers.getall("X-Gateway-User-Id") == [user]
        assert received.headers.getall("X-Gateway-Scopes") == ["me:read"]
        assert "spoofed" not in received.headers.values()
        assert not names & {
            "authorization",
            "x-api-key",
            "proxy-authorization",
            "te",
            "trailer",
            "keep-alive",
            "upgrade",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "forwarded",
            "x-gateway-anything",
            "true-client-ip",
            "cf-connecting-ip",
            "fastly-client-ip",
            "x-client-ip",
            "x-cluster-client-ip",
            "client-ip",
        }
        assert received.headers.getall("X-Real-IP") == ["127.0.0.1"]
        assert key not in str(received.headers)
    print(
        f"\nheader battery: {forged} requests, {len(upstream.received)} forwarded, 0 spoofed headers upstream"
    )
    assert len(upstream.received) >= len(SPOOFED) * 3
