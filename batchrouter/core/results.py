"""Pieces shared by the engine's typed results (pydantic models the faces dump as JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import PlainSerializer

# A moment, written in JSON as `datetime.isoformat()` (e.g. 2026-12-02T00:48:06.123456+00:00), the
# spelling the API and the CLI have always used.
Timestamp = Annotated[datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str, when_used="json")]
