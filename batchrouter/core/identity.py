"""Canonical names: one spelling per workspace and per email, applied at every boundary.

The CLI, the API, the config file, the accounts store and Stripe metadata all pass names through
these functions before comparing or storing them, so `Owner@Acme.test`, ` owner@acme.test ` and a
full-width `ｏwner@acme.test` are one member, and `Acme` and `acme` are one workspace.
"""

from __future__ import annotations

import re
import unicodedata

from batchrouter.core.errors import IdentityError as IdentityError
from batchrouter.core.errors import InvalidEmail, InvalidWorkspace

WORKSPACE_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
_WORKSPACE = re.compile(WORKSPACE_PATTERN)
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,252}")
MAX_EMAIL = 254


def _canonical(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return unicodedata.normalize("NFKC", value).strip().lower()


def canonical_workspace(value: object) -> str:
    """The workspace name as stored: NFKC, trimmed, lower-case, and matching `WORKSPACE_PATTERN`.

    Raises:
        InvalidWorkspace: the name cannot be a workspace (an IdentityError).
    """
    name = _canonical(value)
    if name is None or not _WORKSPACE.fullmatch(name):
        raise InvalidWorkspace(
            f"workspace {value!r} is not a valid name: use 1 to 64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (names are case-insensitive)",
        )
    return name


def canonical_email(value: object) -> str:
    """The email address as stored: NFKC, trimmed, lower-case, one `@`, no spaces or control characters.

    Raises:
        InvalidEmail: not an email address (an IdentityError).
    """
    email = _canonical(value)
    if (
        email is None
        or len(email) > MAX_EMAIL
        or not _EMAIL.fullmatch(email)
        or any(unicodedata.category(c).startswith("C") for c in email)
    ):
        raise InvalidEmail(f"{value!r} is not an email address (expected name@domain)")
    return email


def is_workspace(value: object) -> bool:
    """True when `value` is already a canonical workspace name."""
    return isinstance(value, str) and _WORKSPACE.fullmatch(value) is not None
