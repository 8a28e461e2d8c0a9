"""The stream of status changes that `JobManager.events` returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Self

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ._models import JobEvent


class EventStream:
    """The status changes of `JobManager.events`, subscribed when it was made.

    An async iterator of `JobEvent`, and an async context manager that closes it:

    ```python
    async with manager.events() as events:
        async for event in events:
            print(event.job_id, event.previous, "->", event.status)
    ```

    It ends when the manager closes. Closing it early (leaving the ``async with``,
    `aclose`) stops the flow of events to it; a loop left with ``break`` stops it too,
    once the stream is garbage collected.
    """

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
        """Stop receiving events; the iteration ends."""
        self.close()

    def close(self) -> None:
        """`aclose`, for code that cannot await."""
        self._unsubscribe()
        self._receive.close()

    def __del__(self) -> None:
        # A loop left with break or return never calls aclose: stop the flow here.
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
