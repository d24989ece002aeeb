"""OpenAI's Files and Batch APIs, as the `openai` SDK types them (`FileObject`, `Batch`, `BatchError`).

- `POST /v1/files` (multipart `file`, `purpose`, optional `expires_after[anchor]`/`[seconds]`), `GET
  /v1/files` (`after`, `limit`, `order`, `purpose`), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`,
  `DELETE /v1/files/{id}`; a `purpose=batch` file must be a `.jsonl`.
- `POST /v1/batches` (`input_file_id`, `endpoint` `/v1/chat/completions` or `/v1/responses`,
  `completion_window` "24h", `metadata`), `GET /v1/batches` (`after`, `limit`, newest first), `GET
  /v1/batches/{id}`, `POST /v1/batches/{id}/cancel` (409 once the batch has ended).

Validation happens while the batch is `validating`; a file that breaks the rules ends `failed` with
`errors.data[]` of `{code, line, message, param}` (1-based lines): `empty_file`, `invalid_json_line`,
`missing_required_parameter`, `url_mismatch`, `model_mismatch`, `duplicate_custom_id`, `too_many_tasks`
(over `batch_max_requests`, default 50,000), `file_too_large` (over `batch_max_bytes`, default 200 MB),
and `token_limit_exceeded` when the file's input tokens plus those of the model's batches still in
flight pass the enqueued-token limit. Output lines are `{id, custom_id, response: {status_code,
request_id, body}, error}`: answered lines with status 200 go to `output_file_id`, the others (a 4xx
from the online rules, and `batch_expired` for lines an expired batch never reached) to
`error_file_id`. A cancelled batch keeps the lines answered before the cancel; the rest appear in
neither file. `usage` sums the answered lines. `GET /_batches/openai` (the simulator's own, like
`/_stats`) lists what each batch is charged so far: its answered 200 lines at batch prices.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from batchrouter.simulator import provider_batches as pb
from batchrouter.simulator.server import STATE, SimulatorState, error_body

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/responses": "responses"}
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024**2
MAX_ERRORS = 100  # errors listed for a failed file; OpenAI also lists only the first ones


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    expires_at: int | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.expires_at,
            "status_details": None,
        }


@dataclass
class StoredBatch:
    id: str
    input_file_id: str
    endpoint: str
    window: str
    metadata: dict[str, str] | None
    created: float
    timeline: pb.Timeline
    model: str | None
    lines: list[pb.Line]
    errors: list[dict[str, Any]]
    enqueued_tokens: int
    cancel_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    files_written: bool = False
    collected_at: float | None = None  # when a client read its results (monotonic; see `unseen`, `prune`)


@dataclass
class Store:
    clock: pb.ProviderClock
    files: dict[str, StoredFile] = field(default_factory=dict)
    batches: dict[str, StoredBatch] = field(default_factory=dict)
    counter: int = 0

    def new_id(self, prefix: str, seed: int) -> str:
        self.counter += 1
        return prefix + hashlib.sha256(f"{seed}:{prefix}:{self.counter}".encode()).hexdigest()[:24]


STORE = web.AppKey("openai_batches", Store)


def _fail(status: int, message: str, param: str | None = None) -> web.Response:
    kind = {401: "authentication_error", 404: "invalid_request_error", 409: "invalid_request_error"}.get(
        status, "invalid_request_error"
    )
    return web.json_response(error_body("openai", status, kind, message, param), status=status)


def _authorised(request: web.Request) -> bool:
    key = request.headers.get("authorization", "") or request.headers.get("x-api-key", "")
    return bool(key.replace("Bearer", "").strip())


def _progress(state: SimulatorState, batch: StoredBatch, now: float) -> pb.Progress:
    return pb.progress(
        batch.timeline,
        batch.created,
        now,
        lines=len(batch.lines),
        failed=bool(batch.errors),
        cancel_at=batch.cancel_at,
        cancel_s=state.config.batch_cancel_s,
    )


def _result_line(batch: StoredBatch, index: int, line: pb.Line) -> dict[str, Any]:
    request_id = "req_" + hashlib.sha256(f"{batch.id}:{index}".encode()).hexdigest()[:24]
    return {
        "id": "batch_req_" + request_id[4:],
        "custom_id": line.custom_id,
        "response": {"status_code": line.status, "request_id": request_id, "body": line.body},
        "error": None,
    }


def _write_files(store: Store, state: SimulatorState, batch: StoredBatch, progress: pb.Progress) -> None:
    """The output and error files of a batch that has ended, written once, dated when it ended."""
    if batch.files_written or progress.phase not in ("completed", "expired", "cancelled"):
        return
    batch.files_written = True
    ended = int(progress.events[progress.phase])
    output: list[str] = []
    errors: list[str] = []
    for i, line in enumerate(batch.lines[: progress.answered]):
        (output if line.status == 200 else errors).append(json.dumps(_result_line(batch, i, line)))
    if progress.phase == "expired":
        for i, line in enumerate(batch.lines[progress.answered :], start=progress.answered):
            expired = {
                "id": "batch_req_" + hashlib.sha256(f"{batch.id}:{i}".encode()).hexdigest()[:24],
                "custom_id": line.custom_id,
                "response": None,
                "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired.",
                },
            }
            errors.append(json.dumps(expired))
    for rows, suffix in ((output, "output"), (errors, "error")):
        if not rows:
            continue
        stored = StoredFile(
            store.new_id("file-", state.config.seed),
            f"batch_{batch.id}_{suffix}.jsonl",
            "batch_output",
            ("\n".join(rows) + "\n").encode(),
            ended,
        )
        store.files[stored.id] = stored
        if suffix == "output":
            batch.output_file_id = stored.id
        else:
            batch.error_file_id = stored.id


def _public_batch(store: Store, state: SimulatorState, batch: StoredBatch, now: float | None = None) -> dict[str, Any]:
    progress = _progress(state, batch, store.clock.now() if now is None else now)
    _write_files(store, state, batch, progress)
    at = {phase: int(moment) for phase, moment in progress.events.items()}
    done = batch.lines[: progress.answered]
    succeeded = sum(1 for line in done if line.status == 200)
    failed = len(done) - succeeded
    if progress.phase == "expired":
        failed += len(batch.lines) - len(done)
    validated = progress.phase not in ("validating", "failed")
    usage = {k: sum(line.usage[k] for line in done if line.status == 200) for k in ("input", "cached", "output")}
    reasoning = sum(line.usage["reasoning"] for line in done if line.status == 200)
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.window,
        "status": progress.phase,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": int(batch.created),
        "in_progress_at": at.get("in_progress"),
        "expires_at": int(batch.created + batch.timeline.window),
        "finalizing_at": at.get("finalizing"),
        "completed_at": at.get("completed"),
        "failed_at": at.get("failed"),
        "expired_at": at.get("expired"),
        "cancelling_at": at.get("cancelling"),
        "cancelled_at": at.get("cancelled"),
        "request_counts": {
            "total": len(batch.lines) if validated else 0,
            "completed": succeeded,
            "failed": failed,
        },
        "usage": {
            "input_tokens": usage["input"],
            "input_tokens_details": {"cached_tokens": usage["cached"]},
            "output_tokens": usage["output"],
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": usage["input"] + usage["output"],
        },
        "metadata": batch.metadata,
    }


# -- files -----------------------------------------------------------------------------------------------


def _live_file(store: Store, file_id: str) -> StoredFile | None:
    found = store.files.get(file_id)
    if found is not None and found.expires_at is not None and store.clock.now() >= found.expires_at:
        return None
    return found


async def _create_file(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "Missing API key: send it as 'Authorization: Bearer KEY'.")
    store = request.app[STORE]
    if not request.content_type.startswith("multipart/"):
        return _fail(400, "Invalid request: upload the file as multipart/form-data with 'file' and 'purpose'.")
    fields: dict[str, str] = {}
    filename, data = None, b""
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "file":
            filename, data = part.filename or "upload", bytes(await part.read())
        elif part.name:
            fields[part.name] = await part.text()
    if filename is None:
        return _fail(400, "Missing required parameter: 'file'.", "file")
    purpose = fields.get("purpose")
    if purpose not in PURPOSES:
        return _fail(400, f"Invalid value for 'purpose': {purpose!r}. Supported: {', '.join(PURPOSES)}.", "purpose")
    if purpose == "batch" and not filename.endswith(".jsonl"):
        return _fail(400, "Invalid file format for Batch API. Must be .jsonl", "file")
    now = int(store.clock.now())
    expires_at = None
    if "expires_after[seconds]" in fields or "expires_after[anchor]" in fields:
        seconds = fields.get("expires_after[seconds]", "")
        if fields.get("expires_after[anchor]") != "created_at" or not seconds.isdigit():
            return _fail(
                400,
                "Invalid 'expires_after': expected anchor 'created_at' and seconds from 3600 to 2592000.",
                "expires_after",
            )
        if not 3600 <= int(seconds) <= 2_592_000:
            return _fail(
                400, f"Invalid 'expires_after.seconds': {seconds} is not within 3600-2592000.", "expires_after"
            )
        expires_at = now + int(seconds)
    stored = StoredFile(store.new_id("file-", request.app[STATE].config.seed), filename, purpose, data, now, expires_at)
    store.files[stored.id] = stored
    return web.json_response(stored.public())


def _refresh(store: Store, state: SimulatorState) -> None:
    """Write the files of every batch that has ended, so listings show them."""
    now = store.clock.now()
    for batch in store.batches.values():
        if not batch.files_written:
            _write_files(store, state, batch, _progress(state, batch, now))


async def _list_files(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "Missing API key: send it as 'Authorization: Bearer KEY'.")
    store, state = request.app[STORE], request.app[STATE]
    _refresh(store, state)
    query = request.query
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return _fail(400, f"Invalid value for 'order': {order!r}. Supported: 'asc', 'desc'.", "order")
    purpose = query.get("purpose")
    files = [f for f in store.files.values() if _live_file(store, f.id) and purpose in (None, f.purpose)]
    ids = [f.id for f in (files if order == "asc" else reversed(files))]
    found = pb.page(ids, limit=query.get("limit"), after=query.get("after"), default=10_000, maximum=10_000)
    if isinstance(found, str):
        return _fail(400, found)
    chosen, more = found
    data = [store.files[i].public() for i in chosen]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "first_id": chosen[0] if chosen else None,
            "last_id": chosen[-1] if chosen else None,
            "has_more": more,
        }
    )


async def _get_file(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "Missing API key: send it as 'Authorization: Bearer KEY'.")
    found = _live_file(request.app[STORE], request.match_info["file_id"])
    if found is None:
        return _fail(404, f"No such File object: {request.match_info['file_id']}", "id")
    return web.json_response(found.public())


async def _file_content(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "Missing API key: send it as 'Authorization: Bearer KEY'.")
    found = _live_file(request.app[STORE], request.match_info["file_id"])
    if found is None:
        return _fail(404, f"No such File object: {request.match_info['file_id']}", "id")
    for batch in request.app[STORE].batches.values():
        if found.id in (batch.output_file_id, batch.error_file_id):
            batch.collected_at = time.monotonic()
    return web.Response(body=found.data, content_type="application/octet-stream")


async def _delete_file(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "Missing API key: send it as 'Authorization: Bearer KEY'.")
    store = request.app[STORE]
    file_id = request.match_info["file_id"]
    if _live_file(store, file_id) is None:
        return _fail(404, f"No such File object: {file_id}", "id")
    del store.files[file_id]
    return web.json_response({"id": file_id, "object": "file", "deleted": True})


# -- batches ---------------------------------------------------------------------------------------------


def _error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _read_lines(data: bytes, endpoint: str, state: SimulatorState) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The requests of an input file, and the validation errors that fail the batch (none: it may run)."""
    config = state.config
    max_bytes = config.batch_max_bytes or MAX_BYTES
    if len(data) > max_bytes:
        return [], [_error("file_too_large", f"The input file is {len(data)} bytes; the limit is {max_bytes} bytes.")]
    rows = [(n, raw) for n, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1)]
    rows = [(n, raw) for n, raw in rows if raw.strip()]
    if not rows:
        return [], [_error("empty_file", "The input file is empty: it holds no requests.")]
    max_requests = config.batch_max_requests or MAX_REQUESTS
    if len(rows) > max_requests:
        return [], [
            _error(
                "too_many_tasks",
                f"The input file has {len(rows)} requests; a batch takes at most {max_requests}. Split the file.",
            )
        ]
    requests: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for n, raw in rows:
        try:
            item = json.loads(raw)
        except (ValueError, RecursionError):
            errors.append(_error("invalid_json_line", "This line is not parseable as valid JSON.", n))
            continue
        if not isinstance(item, dict):
            errors.append(_error("invalid_json_line", "This line is not a JSON object.", n))
            continue
        missing = [key for key in ("custom_id", "method", "url", "body") if key not in item]
        if missing:
            errors.append(
                _error("missing_required_parameter", f"Missing required parameter: '{missing[0]}'.", n, missing[0])
            )
            continue
        custom_id, body = item["custom_id"], item["body"]
        if not isinstance(custom_id, str) or not custom_id:
            errors.append(_error("invalid_request", "'custom_id' must be a non-empty string.", n, "custom_id"))
            continue
        if item["method"] != "POST":
            errors.append(_error("invalid_request", "'method' must be 'POST'.", n, "method"))
            continue
        if item["url"] != endpoint:
            errors.append(
                _error(
                    "url_mismatch",
                    f"The URL provided for this request ({item['url']!r}) does not match the batch endpoint "
                    f"{endpoint!r}.",
                    n,
                    "url",
                )
            )
            continue
        line_model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(line_model, str):
            errors.append(_error("missing_required_parameter", "Missing required parameter: 'body.model'.", n, "model"))
            continue
        model = model or line_model
        if line_model != model:
            errors.append(
                _error(
                    "model_mismatch",
                    f"The model {line_model!r} differs from {model!r} on the first line; a batch uses one model.",
                    n,
                    "body.model",
                )
            )
            continue
        if custom_id in seen:
            errors.append(
                _error("duplicate_custom_id", f"The custom_id {custom_id!r} is used more than once.", n, "custom_id")
            )
            continue
        seen.add(custom_id)
        requests.append(item)
    return requests, errors[:MAX_ERRORS]


def _enqueued(store: Store, state: SimulatorState, model: str, now: float) -> int:
    """Input tokens of the model's batches that have passed validation and not ended."""
    total = 0
    for batch in store.batches.values():
        if batch.model == model and not batch.errors:
            if _progress(state, batch, now).phase not in pb.ENDED:
                total += batch.enqueued_tokens
    return total


async def _create_batch(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "Missing API key: send it as 'Authorization: Bearer KEY'.")
    store, state = request.app[STORE], request.app[STATE]
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):
        return _fail(400, "The request body is not JSON.")
    if not isinstance(body, dict):
        return _fail(400, "The request body must be a JSON object.")
    unknown = sorted(set(body) - {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"})
    if unknown:
        return _fail(400, f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    for key in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(key), str):
            return _fail(400, f"Missing required parameter: '{key}'.", key)
    endpoint = body["endpoint"]
    if endpoint not in ENDPOINTS:
        return _fail(
            400, f"Invalid value for 'endpoint': {endpoint!r}. The simulator runs {', '.join(ENDPOINTS)}.", "endpoint"
        )
    if body["completion_window"] != "24h":
        return _fail(400, "Invalid value for 'completion_window': only '24h' is supported.", "completion_window")
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict)
        or len(metadata) > 16
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()
        )
    ):
        return _fail(
            400, "Invalid 'metadata': at most 16 string pairs, keys up to 64 and values up to 512 chars.", "metadata"
        )
    source = _live_file(store, body["input_file_id"])
    if source is None:
        return _fail(400, f"Invalid 'input_file_id': no file {body['input_file_id']!r}.", "input_file_id")
    if source.purpose != "batch":
        return _fail(
            400, f"Invalid 'input_file_id': the file's purpose is {source.purpose!r}, not 'batch'.", "input_file_id"
        )
    requests, errors = _read_lines(source.data, endpoint, state)
    items = [] if errors else [(item["custom_id"], item["body"]) for item in requests]
    lines = await pb.answer_all(state, "openai", ENDPOINTS[endpoint], items)
    model = str(requests[0]["body"]["model"]) if requests and not errors else None
    now = store.clock.now()  # created once every line is read and answered
    tokens = sum(line.usage["input"] for line in lines)
    if model is not None:
        config = state.config
        limit = config.batch_enqueued_tokens_per_model.get(model, config.batch_enqueued_tokens or 0)
        enqueued = _enqueued(store, state, model, now)
        if limit and enqueued + tokens > limit:
            errors = [
                _error(
                    "token_limit_exceeded",
                    f"Enqueued token limit reached for {model} in organization org-simulator. Limit: {limit} "
                    f"enqueued tokens; {enqueued} are in batches in flight and this file holds {tokens}. "
                    "Please try again once some in_progress batches have been completed.",
                )
            ]
            lines = []
    batch_id = store.new_id("batch_", state.config.seed)
    batch = StoredBatch(
        id=batch_id,
        input_file_id=source.id,
        endpoint=endpoint,
        window="24h",
        metadata=metadata,
        created=now,
        timeline=pb.draw_timeline(state.config, f"openai:{len(store.batches) + 1}"),  # the n-th batch made
        model=model or (requests[0]["body"].get("model") if requests else None),
        lines=lines,
        errors=errors,
        enqueued_tokens=tokens,
    )
    store.batches[batch_id] = batch
    return web.json_response(_public_batch(store, state, batch, now))


async def _get_batch(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "Missing API key: send it as 'Authorization: Bearer KEY'.")
    store = request.app[STORE]
    batch = store.batches.get(request.match_info["batch_id"])
    if batch is None:
        return _fail(404, f"No batch found with id '{request.match_info['batch_id']}'.", "batch_id")
    shown = _public_batch(store, request.app[STATE], batch)
    if shown["status"] in pb.ENDED and not (batch.output_file_id or batch.error_file_id) and not batch.collected_at:
        batch.collected_at = time.monotonic()  # ended with nothing to read (failed, or cancelled at once): retrieved
    return web.json_response(shown)


async def _list_batches(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "Missing API key: send it as 'Authorization: Bearer KEY'.")
    store, state = request.app[STORE], request.app[STATE]
    found = pb.page(list(reversed(store.batches)), limit=request.query.get("limit"), after=request.query.get("after"))
    if isinstance(found, str):
        return _fail(400, found)
    chosen, more = found
    return web.json_response(
        {
            "object": "list",
            "data": [_public_batch(store, state, store.batches[i]) for i in chosen],
            "first_id": chosen[0] if chosen else None,
            "last_id": chosen[-1] if chosen else None,
            "has_more": more,
        }
    )


async def _cancel_batch(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _fail(401, "Missing API key: send it as 'Authorization: Bearer KEY'.")
    store, state = request.app[STORE], request.app[STATE]
    batch = store.batches.get(request.match_info["batch_id"])
    if batch is None:
        return _fail(404, f"No batch found with id '{request.match_info['batch_id']}'.", "batch_id")
    now = store.clock.now()
    phase = _progress(state, batch, now).phase
    if phase in pb.ENDED:
        return _fail(409, f"Cannot cancel a batch with status '{phase}'.")
    if batch.cancel_at is None:
        batch.cancel_at = now
    return web.json_response(_public_batch(store, state, batch))


async def _bills(request: web.Request) -> web.Response:
    """The simulator's own figure of what each batch is charged (not an OpenAI endpoint)."""
    store, state = request.app[STORE], request.app[STATE]
    now = store.clock.now()
    rows = []
    for batch in store.batches.values():
        progress = _progress(state, batch, now)
        rows.append(pb.bill(batch.id, progress.phase, batch.lines, progress.answered))
    return web.json_response({"data": rows})


def unseen(app: web.Application) -> int:
    """Batches whose results no client has read yet (still running, or ended and not collected)."""
    return sum(1 for batch in app[STORE].batches.values() if batch.collected_at is None)


def prune(app: web.Application, *, read_before: float) -> int:
    """Forget the batches whose results were read before `read_before` (monotonic), with their files."""
    store = app[STORE]
    gone = [b for b in store.batches.values() if b.collected_at is not None and b.collected_at < read_before]
    for batch in gone:
        del store.batches[batch.id]
        for file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id):
            if file_id is not None:
                store.files.pop(file_id, None)
    return len(gone)


def add_routes(app: web.Application) -> None:
    """Serve the Files and Batch APIs under `/v1`, on the simulator's accelerated clock."""
    app[STORE] = Store(pb.ProviderClock(app[STATE].config.batch_time_scale))
    app.router.add_post("/v1/files", _create_file)
    app.router.add_get("/v1/files", _list_files)
    app.router.add_get("/v1/files/{file_id}", _get_file)
    app.router.add_get("/v1/files/{file_id}/content", _file_content)
    app.router.add_delete("/v1/files/{file_id}", _delete_file)
    app.router.add_post("/v1/batches", _create_batch)
    app.router.add_get("/v1/batches", _list_batches)
    app.router.add_get("/v1/batches/{batch_id}", _get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", _cancel_batch)
    app.router.add_get("/_batches/openai", _bills)
