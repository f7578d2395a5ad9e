"""Path tricks, example routes, own and foreign organizations: no foreign id reaches the upstream,
and every forwarded path is, byte for byte, the path the policy authorised."""

from __future__ import annotations

import itertools
from urllib.parse import unquote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import RecordingUpstream, RunningGateway, raw_request, unique

OWN, FOREIGN = "org-own", "org-foreign"
TRICKS = [
    "..",
    "%2e%2e",
    ".%2e",
    "%2e.",
    "%2E%2E",
    ".",
    "%2e",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "",
    ";x",
    "..;x",
    "%00",
    "%252e%252e",
    "%252f",
    "%EF%BC%8F",
    "／",  # noqa: RUF001 - the fullwidth solidus is the point
    "%c0%ae%c0%ae",
    "%ff",
    "%",
    "%2",
    "a%2fb",
]
TEMPLATES = [
    "/v1/organizations/{org}/projects",
    "/v1/organizations/{org}",
    "/v1/organizations/{org}/users",
    "/v1/organizations/{org}/users/u1",
]


def candidates() -> list[str]:
    paths = []
    for template, trick in itertools.product(TEMPLATES, TRICKS):
        paths += [
            template.format(org=f"{OWN}/{trick}/{FOREIGN}"),
            template.format(org=f"{OWN}/{trick}/../{FOREIGN}"),
            template.format(org=f"{FOREIGN}{trick}"),
            template.format(org=f"{OWN}{trick}{FOREIGN}"),
            template.format(org=f"{trick}{FOREIGN}"),
            template.format(org=OWN).upper(),
            template.format(org=OWN) + f"/{trick}",
        ]
    return paths


async def _user_key(gateway: RunningGateway) -> str:
    user = unique("user")
    await gateway.member(user, "organization", OWN)
    scopes = ["organizations:admin", "projects:admin", "organizations:user:write"]
    return str((await gateway.create_key(user, scopes))["key"])


def _authorised(raw_path: str) -> bool:
    segments = [unquote(s) for s in raw_path.split("?")[0].split("/")[1:]]
    return len(segments) >= 3 and segments[:2] == ["v1", "organizations"] and segments[2] == OWN


async def _send(gateway: RunningGateway, path: str, key: str) -> bytes:
    port = urlsplit(gateway.proxy).port
    assert port is not None
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
    return await raw_request(port, request.encode("utf-8"), timeout=1.0)


async def test_path_matrix(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    key = await _user_key(gateway)
    controls = [template.format(org=OWN) for template in TEMPLATES[:3]]  # GET routes
    sent = candidates() + controls
    statuses: dict[bytes, int] = {}
    for path in sent:
        answer = await _send(gateway, path, key)
        status = answer.split(b" ", 2)[1] if answer else b"closed"
        statuses[status] = statuses.get(status, 0) + 1
    forwarded = [r.raw_path for r in upstream.received]
    print(f"\npath matrix: {len(sent)} sent, statuses {statuses}, {len(forwarded)} forwarded")
    assert not [p for p in forwarded if FOREIGN in unquote(p)]
    assert all(_authorised(p) for p in forwarded)
    assert all(p in sent for p in forwarded)  # the wire path is the requested path
    assert sorted(forwarded) == sorted(controls)  # and the clean requests do pass


segment = st.sampled_from([OWN, FOREIGN, "projects", "users", "u1", *TRICKS])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(segment, min_size=0, max_size=4))
async def test_generated_paths_never_reach_a_foreign_organization(
    gateway: RunningGateway, upstream: RecordingUpstream, tail: list[str]
) -> None:
    key = await _user_key(gateway)
    before = len(upstream.received)
    path = "/v1/organizations/" + "/".join(tail)
    await _send(gateway, path, key)
    for received in upstream.received[before:]:
        assert received.raw_path == path
        assert _authorised(received.raw_path)
        assert FOREIGN not in unquote(received.raw_path).split("/")[3]
