"""Hostile bodies for the Anthropic and OpenAI creates, over real HTTP on loopback.

Every malformed Message Batch create answers 400 `invalid_request_error` in Anthropic's error shape,
naming `requests[i]` and the field at fault (Anthropic's SDK retries a 500: it must never get one);
a body that is not JSON, or not an object, is refused in the dialect of the route it was sent to.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import serve

from batchrouter.access.accounts import Accounts
from batchrouter.core.config import load_settings
from batchrouter.money.ledger import Ledger

pytestmark = pytest.mark.integration

BATCHES = "/v1/messages/batches"
MAX_BODY = 65_536
HYPOTHESIS = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip


@dataclass
class Api:
    url: str
    key: str
    http: httpx.Client

    def create(self, body: bytes | Any, *, content_type: str = "application/json") -> httpx.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"x-api-key": self.key, "anthropic-version": "2023-06-01", "x-batchrouter-deadline": "asap",
                   "content-type": content_type}  # fmt: skip
        return self.http.post(f"{self.url}{BATCHES}", content=data, headers=headers)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The real app (one per module: hypothesis runs many examples against it); workspace acme holds 5 USD."""
    root = tmp_path_factory.mktemp("anthropic-hostile")
    config = load_settings(database=str(root / "batchrouter.duckdb"), storage={"root": str(root / "bucket")},
                           api={"rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000,
                                "max_upload_bytes": MAX_BODY, "max_body_bytes": MAX_BODY // 4})  # fmt: skip
    accounts = Accounts(config.database)
    accounts.set_member("acme", "owner@acme.test", "owner", actor="test")
    key, _ = accounts.create_key("acme", name="k", scopes=["batches:read", "batches:write"],
                                 created_by="owner@acme.test", actor="test")  # fmt: skip
    Ledger(config.database).grant("acme", 5_000_000, key="grant")
    for url in serve(config, lifespan="off"):
        with httpx.Client(timeout=60) as http:
            yield Api(url, key, http)


def valid(custom_id: str = "ok-1") -> dict[str, Any]:
    return {"custom_id": custom_id,
            "params": {"model": "claude-haiku-5-5", "max_tokens": 16,
                       "messages": [{"role": "user", "content": "Name a colour."}]}}  # fmt: skip


def assert_anthropic_400(answer: httpx.Response, *, param: str | None = None, names: str | None = None) -> None:
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert isinstance(body["error"]["message"], str) and body["error"]["reference"].startswith("err_")
    if param is not None:
        assert body["error"]["param"] == param, body
        assert param.split(".")[0] in body["error"]["message"], body  # requests[i] named in the message too
    if names is not None:
        assert names in body["error"]["message"], body


# -- the shapes the review found, and bodies that are not JSON -----------------------------------------
FOUND = {
    "image source a string": ({"type": "image", "source": "abc"}, "content[0].source"),
    "image source without a type": ({"type": "image", "source": {"data": "AAAA"}}, "content[0].source.type"),
    "text a number": ({"type": "text", "text": 5}, "content[0].text"),
    "text null": ({"type": "text", "text": None}, "content[0].text"),
    "text missing": ({"type": "text"}, "content[0]"),
    "block a string": ("hello", "content[0]"),
}


@pytest.mark.parametrize(("block", "where"), FOUND.values(), ids=FOUND.keys())
def test_a_malformed_content_block_is_a_400_naming_the_request_and_the_field(api: Api, block: Any, where: str) -> None:
    bad = valid("bad-1")
    bad["params"]["messages"] = [{"role": "user", "content": [{"type": "text", "text": "Look:"}, block][1:]}]
    answer = api.create({"requests": [valid(), bad]})
    assert_anthropic_400(answer, param=f"requests[1].params.messages[0].{where}", names="'bad-1'")


def test_the_sdk_gets_a_bad_request_error_not_a_server_error_it_would_retry(api: Api) -> None:
    sdk = anthropic.Anthropic(base_url=api.url, api_key=api.key, max_retries=0)
    bad = valid()
    bad["params"]["messages"][0]["content"] = [{"type": "text", "text": None}]
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.batches.create(requests=[bad], extra_headers={"x-batchrouter-deadline": "asap"})  # type: ignore[list-item]
    assert "requests[0]" in refused.value.message and "text" in refused.value.message


NOT_JSON = {
    "not json": (b"this is not json", "application/json"),
    "cut short": (b'{"requests": [', "application/json"),
    "not utf-8": (b"\xff\xfe{}", "application/json"),
    "form encoded": (b"requests=1", "application/x-www-form-urlencoded"),
    "empty": (b"", "application/json"),
    "a list": (b"[1, 2]", "application/json"),
    "a string": (b'"requests"', "application/json"),
    "null": (b"null", "application/json"),
    "no requests": (b"{}", "application/json"),
    "requests a string": (b'{"requests": "all of them"}', "application/json"),
    "requests empty": (b'{"requests": []}', "application/json"),
    "a request a number": (b'{"requests": [5]}', "application/json"),
}


@pytest.mark.parametrize(("body", "content_type"), NOT_JSON.values(), ids=NOT_JSON.keys())
def test_a_body_that_is_not_a_create_body_is_a_400_in_anthropics_shape(
    api: Api, body: bytes, content_type: str
) -> None:
    assert_anthropic_400(api.create(body, content_type=content_type))


def test_a_body_over_the_limit_is_refused_in_anthropics_shape(api: Api) -> None:
    answer = api.create({"requests": [valid(), {"custom_id": "big", "params": {"x": "y" * MAX_BODY}}]})
    assert answer.status_code == 413, answer.text
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "request_too_large"


def test_a_create_is_a_whole_batch_so_the_upload_limit_applies_not_the_json_bodys(api: Api) -> None:
    # Over the JSON body limit (a quarter of the upload limit here) and under the upload limit: taken.
    requests = [valid(f"r-{i}") for i in range(3)]
    requests[0]["params"]["messages"][0]["content"] = "Name a colour. " + "x" * (MAX_BODY // 2)
    answer = api.create({"requests": requests})
    assert answer.status_code == 200, answer.text
    assert answer.json()["request_counts"]["processing"] + answer.json()["request_counts"]["succeeded"] == 3


def test_openais_create_refuses_a_body_that_is_not_json_in_openais_shape(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.key}", "content-type": "application/json"}
    for body in (b"this is not json", b"[1]", b'{"input_file_id": 5, "endpoint": "/v1/chat/completions"}'):
        answer = api.http.post(f"{api.url}/v1/batches", content=body, headers=headers)
        assert answer.status_code == 400, answer.text  # OpenAI's status for an invalid request (not 422)
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and isinstance(error["message"], str), error
        assert {"code", "param"} <= set(error)
    # BatchRouter's own create (a quote id) keeps BatchRouter's status.
    own = api.http.post(f"{api.url}/v1/batches", json={"quote_id": "nope"}, headers=headers)
    assert own.status_code == 422 and own.json()["error"]["code"] == "invalid_request"


# -- every field of the wrong type ------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def not_(ok: Callable[[Any], bool]) -> st.SearchStrategy[Any]:
    return JSON.filter(lambda v: not ok(v))


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _obj(v: Any) -> bool:
    return isinstance(v, dict)


TEXT = {"type": "text", "text": "Hi"}
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
URL_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
TOOL = {"name": "weather", "description": "The weather", "input_schema": {"type": "object"}}


def at(path: str, value: Any, **extra: Any) -> tuple[dict[str, Any], str]:
    """Params with `value` put at `path` (`extra` params beside), and the field the refusal must name."""
    params: dict[str, Any] = {**valid()["params"], **extra}
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
    node: Any = params
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return params, path


def _messages(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


# (the params with one value of the wrong type, the field named): each strategy draws only wrong values.
# fmt: off
WRONG: list[st.SearchStrategy[tuple[dict[str, Any], str]]] = [
    not_(_str).map(lambda v: at("model", v)),
    not_(_integer).map(lambda v: at("max_tokens", v)),
    not_(lambda v: isinstance(v, list) and v != []).map(lambda v: at("messages", v)),
    not_(_obj).map(lambda v: at("messages[0]", v)),
    not_(lambda v: v in ("user", "assistant")).map(lambda v: at("messages[0].role", v)),
    not_(lambda v: isinstance(v, str | list)).map(lambda v: at("messages[0].content", v)),
    not_(_obj).map(lambda v: at("messages[0].content[0]", v, messages=_messages([dict(TEXT)]))),
    not_(lambda v: v in ("text", "image")).map(
        lambda v: at("messages[0].content[0].type", v, messages=_messages([dict(TEXT)]))),
    not_(_str).map(lambda v: at("messages[0].content[0].text", v, messages=_messages([dict(TEXT)]))),
    not_(_obj).map(lambda v: at("messages[0].content[0].cache_control", v, messages=_messages([dict(TEXT)]))),
    not_(lambda v: v is None or isinstance(v, list)).map(
        lambda v: at("messages[0].content[0].citations", v, messages=_messages([dict(TEXT)]))),
    not_(_obj).map(lambda v: at("messages[0].content[0].source", v, messages=_messages([dict(IMAGE)]))),
    not_(lambda v: v in ("base64", "url")).map(
        lambda v: at("messages[0].content[0].source.type", v, messages=_messages([json.loads(json.dumps(IMAGE))]))),
    *[not_(_str).map(lambda v, f=f: at(f"messages[0].content[0].source.{f}", v,
                                       messages=_messages([json.loads(json.dumps(IMAGE))])))
      for f in ("media_type", "data")],
    not_(_str).map(lambda v: at("messages[0].content[0].source.url", v,
                                messages=_messages([json.loads(json.dumps(URL_IMAGE))]))),
    not_(lambda v: isinstance(v, str | list)).map(lambda v: at("system", v)),
    not_(_obj).map(lambda v: at("system[0]", v, system=[dict(TEXT)])),
    not_(_str).map(lambda v: at("system[0].text", v, system=[dict(TEXT)])),
    st.just(at("system[0].type", "image", system=[dict(IMAGE)])),  # a system prompt is text only
    not_(lambda v: isinstance(v, list)).map(lambda v: at("stop_sequences", v)),
    not_(_str).map(lambda v: at("stop_sequences[1]", v, stop_sequences=["END", "STOP"])),
    not_(_number).map(lambda v: at("temperature", v)),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]).map(lambda v: at("temperature", v)),  # no JSON number
    not_(_number).map(lambda v: at("top_p", v)),
    not_(lambda v: isinstance(v, list)).map(lambda v: at("tools", v)),
    not_(_obj).map(lambda v: at("tools[0]", v, tools=[dict(TOOL)])),
    not_(_str).map(lambda v: at("tools[0].name", v, tools=[dict(TOOL)])),
    not_(_str).map(lambda v: at("tools[0].description", v, tools=[dict(TOOL)])),
    not_(_obj).map(lambda v: at("tools[0].input_schema", v, tools=[dict(TOOL)])),
    not_(_obj).map(lambda v: at("tools[0].cache_control", v, tools=[dict(TOOL)])),
    st.sampled_from(["web_search_20250305", "bash", 5]).map(lambda v: at("tools[0].type", v, tools=[dict(TOOL)])),
    not_(_obj).map(lambda v: at("tool_choice", v, tools=[TOOL])),
    not_(lambda v: v in ("auto", "any", "tool", "none")).map(
        lambda v: at("tool_choice.type", v, tools=[TOOL], tool_choice={"type": "auto"})),
    not_(_str).map(lambda v: at("tool_choice.name", v, tools=[TOOL], tool_choice={"type": "tool", "name": "w"})),
    not_(lambda v: isinstance(v, bool)).map(
        lambda v: at("tool_choice.disable_parallel_tool_use", v, tools=[TOOL], tool_choice={"type": "any"})),
    not_(_obj).map(lambda v: at("metadata", v)),
    not_(lambda v: v is None or isinstance(v, str)).map(lambda v: at("metadata.user_id", v, metadata={})),
    not_(lambda v: v is False).map(lambda v: at("stream", v)),
    st.sampled_from(["top_k", "container", "thinking", ""]).map(lambda k: at(k, 1)),  # a param not passed on
    st.sampled_from(["name", "cache_control"]).map(lambda k: at(f"messages[0].{k}", "x")),  # not a message field
]
# fmt: on


@given(case=st.one_of(WRONG), index=st.integers(0, 2))
@HYPOTHESIS
def test_a_value_of_the_wrong_type_anywhere_is_a_400_naming_the_request_and_the_field(
    api: Api, case: tuple[dict[str, Any], str], index: int
) -> None:
    params, path = case
    requests = [valid(f"ok-{n}") for n in range(3)]
    requests[index] = {"custom_id": f"bad-{index}", "params": params}
    assert_anthropic_400(api.create({"requests": requests}), param=f"requests[{index}].params.{path}",
                         names=f"custom_id 'bad-{index}'")  # fmt: skip


# -- the right types, hostile values: the quote rejects the item (an errored result) or the create refuses ----------
HOSTILE_VALUES = {
    "max_tokens huge": {"max_tokens": 2**70},
    "max_tokens negative": {"max_tokens": -5},
    "temperature negative": {"temperature": -1},
    "top_p huge": {"top_p": 1e308},
    "model empty": {"model": ""},
    "model long": {"model": "m" * 5000},
    "many stop sequences": {"stop_sequences": ["END"] * 50},
    "no content": {"messages": [{"role": "user", "content": []}]},
    "a NUL": {"messages": [{"role": "user", "content": "a\u0000b"}]},
    "assistant only": {"messages": [{"role": "assistant", "content": "Hi."}]},
    "empty tool name": {"tools": [{"name": "", "input_schema": {}}]},
}


@pytest.mark.parametrize("params", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
def test_a_hostile_value_of_the_right_type_is_answered_below_500(api: Api, params: dict[str, Any]) -> None:
    answer = api.create({"requests": [{"custom_id": "h-1", "params": {**valid()["params"], **params}}]})
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["error"]["type"] == "invalid_request_error"


# -- anything at all ----------------------------------------------------------------------------------
def _grammar() -> st.SearchStrategy[Any]:
    """Requests shaped roughly like Anthropic's, any value anywhere: the deep paths get random input too."""
    anything = JSON
    source = st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["base64", "url"]) | anything,
            "media_type": anything,
            "data": anything,
            "url": anything,
        },
    )
    block = (
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["text", "image", "tool_use"]) | anything,
                "text": anything,
                "source": source | anything,
            },
        )
        | anything
    )
    message = (
        st.fixed_dictionaries(
            {},
            optional={
                "role": st.sampled_from(["user", "assistant", "system"]) | anything,
                "content": st.lists(block, max_size=3) | anything,
            },
        )
        | anything
    )
    tool = st.fixed_dictionaries({}, optional={"name": anything, "input_schema": anything, "type": anything})
    params = st.fixed_dictionaries({}, optional={
        "model": anything, "max_tokens": anything, "messages": st.lists(message, max_size=3) | anything,
        "system": st.lists(block, max_size=2) | anything, "stop_sequences": anything, "temperature": anything,
        "tools": st.lists(tool, max_size=2) | anything, "tool_choice": anything, "metadata": anything,
        "stream": anything,
    })  # fmt: skip
    request = st.fixed_dictionaries({}, optional={"custom_id": st.just("r-1") | anything, "params": params | anything})
    return st.lists(request | anything, min_size=1, max_size=3)


@given(requests=_grammar())
@HYPOTHESIS
def test_any_create_body_is_answered_below_500_and_a_refusal_in_anthropics_shape(api: Api, requests: Any) -> None:
    answer = api.create({"requests": requests})
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"
