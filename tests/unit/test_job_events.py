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
        notifier = threading.Thread(target=events.notify, args=("a", status))  # the analyzer's thread
        notifier.start()
        assert await asyncio.wait_for(first, 5) == status
        assert await asyncio.wait_for(second, 5) == status
        notifier.join(5)  # every wake-up it would make is scheduled by now...
        await asyncio.sleep(0)  # ...and has run after one turn of the loop
        assert not other.done()
        other.cancel()
        await asyncio.sleep(0)
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
