"""Running blocking calls from asyncio code, with asyncio imported only when used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


async def to_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``asyncio.to_thread``, with asyncio imported only by code that uses it (it is slow to import)."""
    import asyncio

    return await asyncio.to_thread(fn, *args)
