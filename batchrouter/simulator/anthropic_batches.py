"""Anthropic's Message Batches API, as the `anthropic` SDK types it (`MessageBatch`, `MessageBatchIndividualResponse`).

- `POST /v1/messages/batches` (`requests: [{custom_id, params}]`; `custom_id` 1-64 of [a-zA-Z0-9_-],
  unique in the batch; at most `batch_max_requests` requests, default 100,000, and `batch_max_bytes`,
  default 256 MB: otherwise a 400, or a 413 `request_too_large`, and no batch);
- `GET /v1/messages/batches` (`before_id`, `after_id`, `limit`, newest first), `GET .../{id}`,
  `POST .../{id}/cancel`, `GET .../{id}/results` (JSONL), `DELETE .../{id}` (once ended).

`params` are checked as `POST /v1/messages` checks them, when the line is answered: a rejected one
is an `errored` result, not a refused batch. `processing_status` is `in_progress` (covering the
shared timeline's validating, in-progress and finalizing phases), `canceling`, then `ended`;
`request_counts` stay at `processing` until the batch ends, then count `succeeded`, `errored`,
`canceled` (a cancel's unanswered lines) and `expired` (lines the window closed on). Only succeeded
lines are billed (`GET /_batches/anthropic`, the simulator's own, lists each batch's charge). Headers
are checked as on the online endpoint: an API key is required.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from batchrouter.simulator import provider_batches as pb
from batchrouter.simulator.server import STATE, SimulatorState, error_body

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024**2


@dataclass
class StoredBatch:
    id: str
    created: float
    timeline: pb.Timeline
    lines: list[pb.Line]
    cancel_at: float | None = None
    collected_at: float | None = None  # when a client read its results (monotonic; see `unseen`, `prune`)


@dataclass
class Store:
    clock: pb.ProviderClock
    batches: dict[str, StoredBatch] = field(default_factory=dict)
    counter: int = 0


STORE = web.AppKey("anthropic_batches", Store)


def _fail(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(error_body("anthropic", status, kind, message), status=status)


def _authorised(request: web.Request) -> bool:
    key = request.headers.get("x-api-key", "") or request.headers.get("authorization", "")
    return bool(key.replace("Bearer", "").strip())


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def _progress(state: SimulatorState, batch: StoredBatch, now: float) -> pb.Progress:
    return pb.progress(
        batch.timeline,
        batch.created,
        now,
        lines=len(batch.lines),
        cancel_at=batch.cancel_at,
        cancel_s=state.config.batch_cancel_s,
    )


def _status(progress: pb.Progress) -> str:
    if progress.phase == "cancelling":
        return "canceling"
    return "ended" if progress.phase in pb.ENDED else "in_progress"


def _results(batch: StoredBatch, progress: pb.Progress) -> list[dict[str, Any]]:
    """Each request's result once the batch has ended, in request order."""
    rows: list[dict[str, Any]] = []
    unanswered = {"type": "expired"} if progress.phase == "expired" else {"type": "canceled"}
    for i, line in enumerate(batch.lines):
        result: dict[str, Any]
        if i >= progress.answered:
            result = unanswered
        elif line.status == 200:
            # A batch answer reports the batch tier it was billed at.
            usage = {**line.body["usage"], "service_tier": "batch"}
            result = {"type": "succeeded", "message": {**line.body, "usage": usage}}
        else:
            request_id = "req_" + hashlib.sha256(f"{batch.id}:{i}".encode()).hexdigest()[:24]
            result = {"type": "errored", "error": {**line.body, "request_id": request_id}}
        rows.append({"custom_id": line.custom_id, "result": result})
    return rows


def _public(request: web.Request, batch: StoredBatch, now: float | None = None) -> dict[str, Any]:
    store, state = request.app[STORE], request.app[STATE]
    progress = _progress(state, batch, store.clock.now() if now is None else now)
    status = _status(progress)
    counts = {"processing": len(batch.lines), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    ended_at = None
    if status == "ended":
        counts["processing"] = 0
        for row in _results(batch, progress):
            counts[row["result"]["type"]] += 1
        ended_at = progress.events[progress.phase]
    results_url = f"{request.scheme}://{request.host}/v1/messages/batches/{batch.id}/results"
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "ended_at": _iso(ended_at),
        "created_at": _iso(batch.created),
        "expires_at": _iso(batch.created + batch.timeline.window),
        "archived_at": None,
        "cancel_initiated_at": _iso(batch.cancel_at if "cancelling" in progress.events else None),
        "results_url": results_url if status == "ended" else None,
    }


def _check(requests: Any) -> str | None:
    """What is wrong with a create request's `requests` (None: it may be created)."""
    if not isinstance(requests, list) or not requests:
        return "requests: Field required (a non-empty list of {custom_id, params})"
    seen: set[str] = set()
    for i, item in enumerate(requests):
        if not isinstance(item, dict) or set(item) != {"custom_id", "params"}:
            return f"requests.{i}: expected an object with exactly 'custom_id' and 'params'"
        custom_id = item["custom_id"]
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            return f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        if custom_id in seen:
            return f"requests.{i}.custom_id: Duplicate custom_id {custom_id!r}; each request needs its own."
        seen.add(custom_id)
        if not isinstance(item["params"], dict):
            return f"requests.{i}.params: Input should be a valid dictionary"
    return None


async def _create(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "authentication_error", "x-api-key header is required")
    store, state = request.app[STORE], request.app[STATE]
    config = state.config
    raw = await request.read()
    max_bytes = config.batch_max_bytes or MAX_BYTES
    if len(raw) > max_bytes:
        return _fail(413, "request_too_large", f"Request exceeds the maximum size of {max_bytes} bytes.")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return _fail(400, "invalid_request_error", "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return _fail(400, "invalid_request_error", "The request body must be a JSON object.")
    unknown = sorted(set(body) - {"requests"})
    if unknown:
        return _fail(400, "invalid_request_error", f"{unknown[0]}: Extra inputs are not permitted")
    requests = body.get("requests")
    problem = _check(requests)
    if problem or not isinstance(requests, list):
        return _fail(400, "invalid_request_error", problem or "requests: expected a list")
    max_requests = config.batch_max_requests or MAX_REQUESTS
    if len(requests) > max_requests:
        return _fail(
            400, "invalid_request_error", f"requests: at most {max_requests} requests per batch, got {len(requests)}."
        )
    items = [(item["custom_id"], item["params"]) for item in requests]
    lines = await pb.answer_all(state, "anthropic", "messages", items)
    store.counter += 1
    batch_id = "msgbatch_" + hashlib.sha256(f"{config.seed}:msgbatch:{store.counter}".encode()).hexdigest()[:24]
    batch = StoredBatch(batch_id, store.clock.now(), pb.draw_timeline(config, f"anthropic:{store.counter}"), lines)
    store.batches[batch_id] = batch
    return web.json_response(_public(request, batch, batch.created))


def _find(request: web.Request) -> StoredBatch | None:
    return request.app[STORE].batches.get(request.match_info["batch_id"])


def _missing(request: web.Request) -> web.Response:
    return _fail(404, "not_found_error", f"No message batch with id {request.match_info['batch_id']!r}.")


async def _get(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "authentication_error", "x-api-key header is required")
    batch = _find(request)
    return _missing(request) if batch is None else web.json_response(_public(request, batch))


async def _list(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "authentication_error", "x-api-key header is required")
    store = request.app[STORE]
    query = request.query
    found = pb.page(
        list(reversed(store.batches)),
        limit=query.get("limit"),
        after=query.get("after_id"),
        before=query.get("before_id"),
        maximum=1000,
    )
    if isinstance(found, str):
        return _fail(400, "invalid_request_error", found)
    chosen, more = found
    return web.json_response(
        {
            "data": [_public(request, store.batches[i]) for i in chosen],
            "has_more": more,
            "first_id": chosen[0] if chosen else None,
            "last_id": chosen[-1] if chosen else None,
        }
    )


async def _cancel(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "authentication_error", "x-api-key header is required")
    batch = _find(request)
    if batch is None:
        return _missing(request)
    store, state = request.app[STORE], request.app[STATE]
    now = store.clock.now()
    if batch.cancel_at is None and _progress(state, batch, now).phase not in pb.ENDED:
        batch.cancel_at = now
    return web.json_response(_public(request, batch))


async def _results_file(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "authentication_error", "x-api-key header is required")
    batch = _find(request)
    if batch is None:
        return _missing(request)
    store, state = request.app[STORE], request.app[STATE]
    progress = _progress(state, batch, store.clock.now())
    if _status(progress) != "ended":
        return _fail(
            400, "invalid_request_error", f"Batch {batch.id} is still {_status(progress)}; results come once it ends."
        )
    data = "".join(json.dumps(row) + "\n" for row in _results(batch, progress))
    batch.collected_at = time.monotonic()
    return web.Response(text=data, content_type="application/binary")


async def _delete(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "authentication_error", "x-api-key header is required")
    batch = _find(request)
    if batch is None:
        return _missing(request)
    store, state = request.app[STORE], request.app[STATE]
    status = _status(_progress(state, batch, store.clock.now()))
    if status != "ended":
        return _fail(
            400, "invalid_request_error", f"Batch {batch.id} is {status}; cancel it and wait for it to end first."
        )
    del store.batches[batch.id]
    return web.json_response({"id": batch.id, "type": "message_batch_deleted"})


async def _bills(request: web.Request) -> web.Response:
    """The simulator's own figure of what each batch is charged (not an Anthropic endpoint)."""
    store, state = request.app[STORE], request.app[STATE]
    now = store.clock.now()
    rows = []
    for batch in store.batches.values():
        progress = _progress(state, batch, now)
        rows.append(pb.bill(batch.id, _status(progress), batch.lines, progress.answered))
    return web.json_response({"data": rows})


def unseen(app: web.Application) -> int:
    """Batches whose results no client has read yet (still running, or ended and not collected)."""
    return sum(1 for batch in app[STORE].batches.values() if batch.collected_at is None)


def prune(app: web.Application, *, read_before: float) -> int:
    """Forget the batches whose results were read before `read_before` (monotonic)."""
    store = app[STORE]
    gone = [b for b in store.batches.values() if b.collected_at is not None and b.collected_at < read_before]
    for batch in gone:
        del store.batches[batch.id]
    return len(gone)


def add_routes(app: web.Application) -> None:
    """Serve Message Batches under `/v1/messages/batches`, on the simulator's accelerated clock."""
    app[STORE] = Store(pb.ProviderClock(app[STATE].config.batch_time_scale))
    app.router.add_post("/v1/messages/batches", _create)
    app.router.add_get("/v1/messages/batches", _list)
    app.router.add_get("/v1/messages/batches/{batch_id}", _get)
    app.router.add_post("/v1/messages/batches/{batch_id}/cancel", _cancel)
    app.router.add_get("/v1/messages/batches/{batch_id}/results", _results_file)
    app.router.add_delete("/v1/messages/batches/{batch_id}", _delete)
    app.router.add_get("/_batches/anthropic", _bills)
