"""A finished batch's outputs as OpenAI's batch output and error files: one JSON line per request.

    {"id": "batch_req_...", "custom_id": "...", "response": {"status_code": 200, "request_id": "...",
     "body": {chat.completion}}, "error": null}                                  (the output file)
    {"id": "batch_req_...", "custom_id": "...", "response": null,
     "error": {"code": "...", "message": "..."}}                                 (the error file)

Built from `outputs.parquet` and `receipts.parquet` (`answers.answered_rows`), so every request has
exactly one line whatever provider or lane answered it. A succeeded request's body is an OpenAI
`chat.completion` (or, for a `/v1/responses` line, a `response`) made from its output: the choices
as the provider gave them, the usage the receipt recorded, the model that answered. Each line also
carries `batchrouter` (route, provider, lane, cost) beside OpenAI's keys. A request never sent (the
batch was cancelled or expired) is an error line `batch_cancelled` / `batch_expired`; a line refused
at intake is an error line with its code and the line number.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.storage import Storage
from batchrouter.dropin.answers import answered_rows


def line_id(batch_id: str, row: int) -> str:
    return "batch_req_" + hashlib.sha256(f"{batch_id}\n{row}".encode()).hexdigest()[:24]


def _usage(r: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = int(r.get("input_tokens") or 0), int(r.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(r.get("cached_tokens") or 0)}}  # fmt: skip


def _choices(r: dict[str, Any]) -> list[dict[str, Any]]:
    if r.get("choices"):
        parsed = json.loads(r["choices"])
        if isinstance(parsed, list) and parsed:
            return [{"logprobs": None, **c} for c in parsed]
    message = {"role": "assistant", "content": r.get("output_text") or "", "refusal": None}
    return [{"index": 0, "message": message, "finish_reason": r.get("finish_reason") or "stop", "logprobs": None}]


def _created(r: dict[str, Any]) -> int:
    finished = r.get("finished_at")
    return int(finished.timestamp()) if finished is not None else 0


def chat_completion(r: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI `chat.completion` object from one succeeded item's output and receipt."""
    request_id = r.get("provider_request_id") or line_id(r["batch_id"], r["row"])
    return {"id": f"chatcmpl-{hashlib.sha256(request_id.encode()).hexdigest()[:24]}", "object": "chat.completion",
            "created": _created(r), "model": r.get("model") or "", "choices": _choices(r), "usage": _usage(r),
            "service_tier": _TIERS.get(str(r.get("lane")), "default"), "system_fingerprint": None}  # fmt: skip


# The tier OpenAI reports in a completion, by the lane that answered it (batch lines report the default).
_TIERS = {"flex": "flex", "priority": "priority"}


def response_object(r: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI `response` object (for `/v1/responses` lines) from one succeeded item."""
    usage = _usage(r)
    text = "".join(str((c.get("message") or {}).get("content") or "") for c in _choices(r))
    return {
        "id": f"resp_{hashlib.sha256(str(r.get('provider_request_id') or r['row']).encode()).hexdigest()[:24]}",
        "object": "response", "created_at": _created(r), "status": "completed", "model": r.get("model") or "",
        "output": [{"type": "message", "id": f"msg_{line_id(r['batch_id'], r['row'])[10:]}", "status": "completed",
                    "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                  "total_tokens": usage["total_tokens"],
                  "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]},
                  "output_tokens_details": {"reasoning_tokens": 0}},
    }  # fmt: skip


def _unsent_code(ended: str) -> str:
    return {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(ended, "batch_incomplete")


def build(storage: Storage, info: BatchInfo, *, ended: str) -> tuple[bytes, bytes]:
    """(output file, error file) of a batch whose receipts are final; `ended` is its BatchRouter state."""
    ok, bad = [], []
    for r in answered_rows(storage, info).iter_rows(named=True):
        extra = {"route": r["route"], "provider": r["provider"], "lane": r["lane"],
                 "cost_usd_micros": int(r["cost_usd_micros"] or 0), "line": r["row"]}  # fmt: skip
        line: dict[str, Any] = {"id": line_id(info.batch_id, r["row"]), "custom_id": r["item_id"]}
        if r["status"] == "succeeded":
            body = response_object(r) if r.get("endpoint") == "responses" else chat_completion(r)
            request_id = r["provider_request_id"] or line["id"]
            line |= {"response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}
            ok.append({**line, "batchrouter": extra})
            continue
        if r["status"] == "pending":
            code, message = _unsent_code(ended), f"the batch ended ({ended}) before this request was answered"
        elif r["status"] == "rejected":
            code, message = r["error_code"] or "invalid_request", f"line {r['row']}: {r['error_message']}"
        else:
            code, message = r["error_code"] or "failed", r["error_message"] or "the request failed"
        bad.append({**line, "response": None, "error": {"code": code, "message": message}, "batchrouter": extra})
    return _jsonl(ok), _jsonl(bad)


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False, default=str) + "\n" for line in lines).encode()
