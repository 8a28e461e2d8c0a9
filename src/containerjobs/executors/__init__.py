"""Executors: how the manager speaks to a container engine.

`Executor` is the protocol an engine implements; `DockerExecutor` (a Docker daemon)
and `SwarmExecutor` (a Swarm cluster, through a manager) are the ones that ship. The
value types are what an executor hands back. An executor of your own plugs in with
``JobManager(executor_factory=...)``, and `containerjobs.testing.ExecutorContract`
checks it behaves as the manager expects.
"""

from ._base import LABEL_ATTEMPT as LABEL_ATTEMPT
from ._base import LABEL_JOB_ID as LABEL_JOB_ID
from ._base import LABEL_MANAGER as LABEL_MANAGER
from ._base import LABEL_STORE as LABEL_STORE
from ._base import UNENFORCEABLE as UNENFORCEABLE
from ._base import ContainerInfo as ContainerInfo
from ._base import Executor as Executor
from ._base import ExitStatus as ExitStatus
from ._base import LaunchRequest as LaunchRequest
from ._base import LineSink as LineSink
from ._base import LogReader as LogReader
from ._base import OutputLine as OutputLine
from ._base import PullResult as PullResult
from ._base import ResourceSample as ResourceSample
from ._docker import DockerExecutor as DockerExecutor
from ._swarm import SwarmExecutor as SwarmExecutor

__all__ = [
    "LABEL_ATTEMPT",
    "LABEL_JOB_ID",
    "LABEL_MANAGER",
    "LABEL_STORE",
    "UNENFORCEABLE",
    "ContainerInfo",
    "DockerExecutor",
    "Executor",
    "ExitStatus",
    "LaunchRequest",
    "LineSink",
    "LogReader",
    "OutputLine",
    "PullResult",
    "ResourceSample",
    "SwarmExecutor",
]
