"""JobEvents: the analyzer's thread wakes the API's long-polls of one job, handing them its status."""

from __future__ import annotations

import asyncio
import threading

from taskherd.jobs import JobEvents


def test_a_notify_wakes_the_waiters_of_its_job_only_and_hands_them_its_status() -> None:
    async def main() -> None:
        events = JobEvents()
        first, second, other = events.register("a"), events.register("a"), events.register("b")
        status = {"job": "a", "done": True, "summarized": True}
        loop, marker = asyncio.get_running_loop(), asyncio.get_running_loop().create_future()

        def analyzer() -> None:  # notify, then a marker that runs after every wake-up it scheduled
            events.notify("a", status)
            loop.call_soon_threadsafe(marker.set_result, None)

        threading.Thread(target=analyzer).start()
        await asyncio.wait_for(marker, 5)
        assert first.result() == status and second.result() == status
        assert not other.done()
        other.cancel()  # schedules its done callback (which forgets it)...
        forgotten = loop.create_future()
        loop.call_soon(forgotten.set_result, None)  # ...which runs before this one
        await forgotten
        assert not events._waiters  # answered and cancelled waiters are forgotten

    asyncio.run(main())


def test_a_notify_without_a_status_still_wakes_the_waiters() -> None:
    """The watcher's sweep may summarize a job before the analyzer does: the analyzer then has no
    status to hand over, and its waiters must still wake (to read it), not wait for their re-read."""
    async def main() -> None:
        events = JobEvents()
        waiter = events.register("a")
        threading.Thread(target=events.notify, args=("a", None)).start()
        assert await asyncio.wait_for(waiter, 5) is None

    asyncio.run(main())
