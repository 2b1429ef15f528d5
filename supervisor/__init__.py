"""Supervision trees of pykka actors, after OTP: restart children, escalate past an intensity.

The public face is re-exported here; the modules behind it are implementation.
"""

from taskherd.supervisor.messages import ChildExited, ChildFailed, GetChild, Sweep, WhichChildren
from taskherd.supervisor.spec import ChildSpec, Factory
from taskherd.supervisor.strategies import OneForAll, OneForOne, RestForOne, Strategy
from taskherd.supervisor.supervised import Supervised
from taskherd.supervisor.supervisor import ChildInfo, EscalationHandler, Supervisor
from taskherd.supervisor.ticker import Ticker, Ticking

__all__ = [
    "ChildExited",
    "ChildFailed",
    "ChildInfo",
    "ChildSpec",
    "EscalationHandler",
    "Factory",
    "GetChild",
    "OneForAll",
    "OneForOne",
    "RestForOne",
    "Strategy",
    "Supervised",
    "Supervisor",
    "Sweep",
    "Ticker",
    "Ticking",
    "WhichChildren",
]
