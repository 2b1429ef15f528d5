"""One error root for taskherd, with a sub-root per subsystem.

Errors that come from input keep the input, so a message can name exactly what was wrong.
Control flow (a retry, a drain) is never expressed with these: they mean failure.
"""

from __future__ import annotations


class TaskherdError(Exception):
    """Root of every error taskherd raises on purpose."""


class ConfigError(TaskherdError):
    """A configuration file could not be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class InvalidInput(TaskherdError):
    """A user's input is unusable; `field` names the part that is wrong (e.g. `tasks[3].type`), and
    `problem` says what is wrong with it. The API answers 422 with both."""

    def __init__(self, field_: str, problem: str) -> None:
        super().__init__(f"{field_}: {problem}")
        self.field = field_
        self.problem = problem


class InvalidTask(InvalidInput):
    """A submitted task (or an analyzer's child) is unusable."""


class HerdFull(TaskherdError):
    """A submission would pass a bound on open tasks (`[manager].max_open_tasks` or
    `max_open_tasks_per_job`) and was refused whole: nothing of it was created. The API answers 429
    with Retry-After; the client and the CLI wait and send it again."""

    def __init__(self, setting: str, bound: int, where: str, open_: int, asked: int) -> None:
        super().__init__(f"the herd is full: this submit would pass [manager].{setting} = {bound} "
                         f"({where} {open_} open, {asked} asked); retry when open work has drained")
        self.setting, self.bound, self.open, self.asked = setting, bound, open_, asked


class ServiceError(TaskherdError):
    """A backing service (nsqd, nsqlookupd, redis-server, mariadbd) is missing or would not start."""


class MissingBinary(ServiceError):
    """A service binary is on neither PATH nor the project cache; says how to install it."""

    def __init__(self, name: str, install_hint: str) -> None:
        super().__init__(f"{name} not found on PATH or in the taskherd cache; install it with: {install_hint}")
        self.name = name
        self.install_hint = install_hint


class StoreError(TaskherdError):
    """Redis refused or lost a state transition."""


class LeaseLapsed(StoreError):
    """Redis refused a singleton's act (the TimeoutWatcher's requeue or promotion): the holder's lease
    had run out by Redis's clock, so another node may hold it and act now. The act is left to it."""

    def __init__(self, act: str) -> None:
        super().__init__(f"{act} refused: this node's watcher lease ran out mid-sweep (another may hold it)")


class QueueError(TaskherdError):
    """NSQ refused a publish or a subscription."""


class SupervisorEscalation(TaskherdError):
    """A supervisor exceeded its restart intensity and gave up on its children."""


class ExecutorError(TaskherdError):
    """An executor or analyzer could not be described or started as asked (its spec, not its run)."""
