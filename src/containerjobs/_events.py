"""The stream of status changes that `JobManager.events` returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Self

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ._models import JobEvent


class EventStream:
    """The status changes of `JobManager.events`, subscribed when it was made."""

    def __init__(
        self, receive: MemoryObjectReceiveStream[JobEvent], unsubscribe: Callable[[], None]
    ) -> None:
        self._receive = receive
        self._unsubscribe = unsubscribe

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> JobEvent:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            await self.aclose()
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self._unsubscribe()
        self._receive.close()

    def __del__(self) -> None:
        # A loop left with break or return never calls aclose: stop the flow here.
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
