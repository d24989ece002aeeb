"""Cursor paging as OpenAI's list endpoints do it: `limit` items after the item `after`, and whether more follow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from batchrouter.core.errors import InvalidRequest

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def page(
    items: Sequence[T], *, key: Callable[[T], str], after: str | None, limit: int, before: str | None = None,
    after_name: str = "after",
) -> Page[T]:  # fmt: skip
    """The `limit` items following the one whose key is `after` (from the start without it).

    With `before` instead (Anthropic's lists), the `limit` items just before that one; `has_more`
    then says whether more come before them. `after_name` is the cursor's name in the request
    (Anthropic's is `after_id`), for the refusal.

    Raises:
        InvalidRequest: `after` or `before` names no item of the list (a cursor must come from an earlier page).
    """
    if before:
        keys = [key(i) for i in items]
        if before not in keys:
            raise InvalidRequest(f"before_id: {before!r} is not in this list; pass the first_id of an earlier page",
                                 param="before_id")  # fmt: skip
        end = keys.index(before)
        return Page(list(items[max(0, end - limit) : end]), has_more=end - limit > 0)
    start = 0
    if after:
        keys = [key(i) for i in items]
        if after not in keys:
            raise InvalidRequest(f"{after_name}: {after!r} is not in this list; pass the last_id of an earlier "
                                 "page", param=after_name)  # fmt: skip
        start = keys.index(after) + 1
    chosen = list(items[start : start + limit])
    return Page(chosen, has_more=start + limit < len(items))
