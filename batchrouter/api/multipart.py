"""multipart/form-data bodies (OpenAI's file upload) read with the standard library, within the upload limit.

The body is read whole first (`BodyLimit` bounds it), then split by the `email` package's MIME
parser: no dependency, and nothing past the limit is ever held. A body that is not multipart, or
whose parts cannot be read, is refused as `invalid_request` naming what was wrong.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass

from batchrouter.core.errors import InvalidRequest, UnreadableRequest


@dataclass(frozen=True)
class Part:
    name: str
    data: bytes
    filename: str | None = None


def parse_form(content_type: str, body: bytes) -> dict[str, Part]:
    """The form's fields by name (the first of each name)."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type.lower():
        raise InvalidRequest("send the file as multipart/form-data with fields 'file' and 'purpose'", param="file")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    try:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    except Exception as exc:  # noqa: BLE001 - the parser's failures are the client's malformed body
        raise UnreadableRequest(f"the multipart body cannot be read ({exc})") from exc
    if not message.is_multipart():
        raise UnreadableRequest("the multipart body has no parts")
    fields: dict[str, Part] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or name in fields:
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        fields[name] = Part(name=name, data=data, filename=part.get_filename())
    return fields


def text_field(fields: dict[str, Part], name: str, *, required: bool = False) -> str | None:
    part = fields.get(name)
    if part is None:
        if required:
            raise InvalidRequest(f"{name}: the form needs a field {name!r}", param=name)
        return None
    try:
        return part.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRequest(f"{name}: not UTF-8 text", param=name) from None
