"""A fake container engine, for testing code that uses containerjobs without Docker.

Hand a `FakeCluster` to the manager as its executor factory; every host then runs
jobs in memory, as the behaviour you give says:

```python
from containerjobs.testing import FakeCluster, FakeRun

cluster = FakeCluster(lambda job: FakeRun(stdout="hi\\n"))
async with JobManager(hosts=[DockerHost("a", "unix:///fake")],
                      executor_factory=cluster) as manager:
    job = await manager.run(JobSpec(image="alpine", command="anything"))
    assert job.stdout == "hi\\n"
```

The fake honours the manager's side of the contract (timeouts kill, cancel kills,
logs end when the container exits, labels are kept) so the manager behaves as it
would against Docker.

`StorageContract` and `ExecutorContract` are the behaviour suites every store and
every executor must pass, ours and yours: subclass one in your tests with a factory
(see their docstrings). They need pytest, which is imported only when you use them.
"""

import sys
from typing import Any

from ._fake import FakeCluster as FakeCluster
from ._fake import FakeExecutor as FakeExecutor
from ._fake import FakeRun as FakeRun

__all__ = ["ExecutorContract", "FakeCluster", "FakeExecutor", "FakeRun", "StorageContract"]

# The contract suites import pytest: they are loaded only when asked for.
_LAZY = {
    "ExecutorContract": "._executor_contract",
    "StorageContract": "._storage_contract",
}

# Under pytest, have it rewrite the suites' asserts, so that a failing check shows the
# values it compared: pytest rewrites only modules registered before their import.
if "pytest" in sys.modules:
    sys.modules["pytest"].register_assert_rewrite(*(__name__ + m for m in _LAZY.values()))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
