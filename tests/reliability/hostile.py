"""What the hostile-input and security tests share: judging an answer against the contract's
error shape, a fingerprint of every table (to prove a refused request wrote nothing), the routes
of the app, and strategies for hostile values."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientResponse, web
from hypothesis import strategies as st
from psycopg import sql

from queueing import db

ERROR_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 413, 422, 429})
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    text: str


async def judge(response: ClientResponse, what: str = "") -> Answer:
    """A 4xx error in the contract's shape, or a success; never a 5xx (contract: HTTP API)."""
    text = await response.text(errors="replace")
    status = response.status
    assert status < 500, f"{what}: {status} {text[:500]}"
    if status >= 400:
        assert status in ERROR_STATUSES, f"{what}: status {status} {text[:300]}"
        assert response.content_type == "application/json", f"{what}: {response.content_type}"
        body = json.loads(text)
        assert isinstance(body, dict) and set(body) == {"error"}, f"{what}: {text[:300]}"
        error = body["error"]
        assert set(error) == {"code", "message"}, f"{what}: {text[:300]}"
        assert SNAKE.match(error["code"]), f"{what}: {error}"
        assert isinstance(error["message"], str) and error["message"], f"{what}: {error}"
        assert "Traceback" not in error["message"], f"{what}: {error}"
        return Answer(status, body, text)
    if response.content_type == "application/json":
        return Answer(status, json.loads(text), text)
    return Answer(status, None, text)


async def fingerprint(pool: db.Db) -> dict[str, tuple[int, str]]:
    """Every table of the public schema: its row count and an md5 of all its rows."""
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
        )
        tables = [row["table_name"] for row in await cur.fetchall()]
        found = {}
        for table in tables:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text),"
                    " '')) AS h FROM {} AS t"
                ).format(sql.Identifier(table))
            )
            row = await cur.fetchone()
            assert row is not None
            found[table] = (int(row["n"]), str(row["h"]))
        return found


def id_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path template) of every route with an {id} in it: the ones isolation and path
    fuzzing must cover, found from the router so that a new route is covered too."""
    found = []
    for resource in app.router.resources():
        template = resource.get_info().get("formatter")
        if not template or "{id}" not in template:
            continue
        for route in resource:
            if route.method not in ("HEAD", "OPTIONS"):
                found.append((route.method, template))
    return sorted(set(found))


def id_kind(template: str) -> str:
    """Which kind of id a route takes: conversation, job or message."""
    for prefix, kind in (("/api/conversations/", "conversation"), ("/api/jobs/", "job"),
                         ("/api/messages/", "message")):  # fmt: skip
        if template.startswith(prefix):
            return kind
    raise AssertionError(f"a route with an id of an unknown kind: {template}")


# -- strategies -------------------------------------------------------------------------------

# Injection strings for every text field: they must be stored and shown back verbatim.
INJECTIONS = [
    "'; DROP TABLE jobs; --",
    "Robert'); DROP TABLE users;--",
    '" OR 1=1 --',
    "' OR '1'='1",
    "1; UPDATE users SET is_admin = true",
    "' UNION SELECT token_hash, NULL FROM api_tokens --",
    "$$; SELECT pg_sleep(5); $$",
    "'); SELECT pg_terminate_backend(pg_backend_pid()); --",
    "%(owner)s %(prompt)s %s %%",
    "{0} {prompt} ${1} $1 ?",
    "\\'; COPY users TO PROGRAM 'touch /tmp/gq-pwned'; --",
    "E'\\x27' || chr(39)",
    "\u02bc; DROP TABLE conversations; --",  # a modifier-letter apostrophe
    "-- comment /* open",
    "\\\\\\' \\\" \\n \\u0027",
    "<script>alert(1)</script>",
    '{"$where": "1 == 1"}',
]

NUMBER_EDGES = [
    0,
    -0,
    1,
    -1,
    7,
    8,
    63,
    64,
    2048,
    2049,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**32 - 1,
    2**32,
    2**53 + 1,
    2**63,
    10**30,
    -(10**30),
    0.0,
    -0.0,
    0.5,
    1e-320,
    1.7976931348623157e308,
    float("inf"),
    float("-inf"),
    float("nan"),
]

# Text a JSON encoder would escape, sent raw: NUL, lone surrogates (as \u escapes, and as the
# CESU bytes Python's decoder refuses), invalid UTF-8, the numbers JSON has no literal for.
RAW_VALUES = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"-0",
    b"-0.0",
    b"1e999999",
    b"-1e999999",
    b"1" * 5000,
    b"9" * 400,
    b"1.5e-400",
    b"0x10",
    b"+1",
    b".5",
    b"01",
    b"true",
    b"null",
    b"[]",
    b"{}",
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b'"a\\u0000b"',
    b'"\x00"',
    b'"\xed\xa0\x80"',
    b'"\xff\xfe"',
    b'"\xc0\xaf"',
    b'"\x7f\x1b[31m"',
    b'"\\' + b"\\" * 9 + b'"',
    b'"\t\n"',
    b'"' + "\u202e\ufeff\U0001f600".encode() + b'"',
    b'"\xf4\x90\x80\x80"',
]

FIELDS = [
    "prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed",
    "priority", "max_attempts", "timeout_s", "title", "op", "conversation_id", "job_ids",
    "since_seq", "job_id", "status", "queue_position", "error", "extra",
]  # fmt: skip

texts = (
    st.text(max_size=40)
    | st.sampled_from(INJECTIONS)
    | st.text(
        alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=10
    )
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(NUMBER_EDGES)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
# Objects that look like real requests, with any of the known field names and hostile values.
near_requests = st.dictionaries(st.sampled_from(FIELDS) | texts, json_values, max_size=6)


def encode(value: Any) -> bytes:
    """JSON as a careless client writes it: NaN/Infinity literals allowed, lone surrogates kept."""
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bodies that are not JSON, or JSON with something a JSON encoder would never write."""
    kind = draw(st.sampled_from(["field", "key", "nested", "binary", "text", "truncated"]))
    if kind == "field":
        return b'{"' + draw(st.sampled_from(FIELDS)).encode() + b'": ' + draw(
            st.sampled_from(RAW_VALUES)) + b"}"  # fmt: skip
    if kind == "key":
        raw = draw(st.sampled_from([v for v in RAW_VALUES if v.startswith(b'"')]))
        return b'{"extra": {' + raw + b": 1}, " + raw + b": 2}"
    if kind == "nested":
        depth = draw(st.sampled_from([40, 1000, 30000]))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        closer = b"]" if opener == b"[" else b"}"
        return opener * depth + b"1" + closer * depth
    if kind == "binary":
        return draw(st.binary(max_size=300))
    if kind == "text":
        return draw(st.text(max_size=100)).encode("utf-8", "surrogatepass")
    body = encode(draw(near_requests))
    return body[: draw(st.integers(0, max(0, len(body) - 1)))]


def mutated_ids(real: uuid.UUID) -> st.SearchStrategy[str]:
    """Path ids that are not quite this id: one character off, other spellings, other things."""
    text = str(real)
    return st.one_of(
        st.builds(lambda i: text[:i] + text[i + 1 :], st.integers(0, len(text) - 1)),
        st.builds(
            lambda i, c: text[:i] + c + text[i:],
            st.integers(0, len(text)),
            st.sampled_from("0af-g %/"),
        ),
        st.builds(lambda i: text[:i] + "g" + text[i + 1 :], st.integers(0, len(text) - 1)),
        st.sampled_from(
            [
                text.upper(),
                "{" + text + "}",
                "urn:uuid:" + text,
                text.replace("-", ""),
                " " + text,
                text + "\n",
                text + "/",
                "..",
                ".",
                "%00",
                "%2e%2e%2f",
                "0" * 5000,
                str(uuid.UUID(int=0)),
                str(uuid.UUID(int=2**128 - 1)),
                "null",
                "undefined",
                "-1",
                "1 OR 1=1",
                "'; DROP TABLE jobs; --",
            ]
        ),
        st.text(min_size=1, max_size=60),
    )
