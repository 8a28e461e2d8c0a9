"""The exception tree of containerjobs.

Every error the library raises on purpose derives from `ContainerJobsError`:

```text
ContainerJobsError
├── InvalidJobSpec        (also ValueError)  a spec that cannot be run as written
├── PolicyViolation       (also ValueError)  a spec the security policy refuses
├── TemplateNotFound      (also KeyError)    an unknown environment template
├── JobNotFound           (also KeyError)    an unknown job id
├── SecretNotFound        (also KeyError)    a secret the launching manager cannot resolve
├── HostUnavailable                          a Docker host that cannot be reached
├── NoWorkerAvailable                        nothing can run a job that is waited for
├── ExecutorError                            the engine refused or failed an operation
│   ├── ImageNotFound                        an image that is absent and may not be pulled
│   └── Unschedulable                        no node can take the job now (Swarm)
└── StorageError                             the job store failed
```

Backends translate their driver's exceptions into these with ``raise ... from exc``,
so the original error stays reachable as ``__cause__``.
"""

from __future__ import annotations


class ContainerJobsError(Exception):
    """Root of every error containerjobs raises on purpose."""


class InvalidJobSpec(ContainerJobsError, ValueError):
    """A job spec that cannot be run as written (bad image, limit, key, ...)."""


class PolicyViolation(ContainerJobsError, ValueError):
    """A job spec that the security policy refuses."""


class _KeyErrorMessage(KeyError):
    # KeyError.__str__ repr()s its argument, which puts quotes around a sentence.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TemplateNotFound(ContainerJobsError, _KeyErrorMessage):
    """An environment template name that is not in the store."""


class JobNotFound(ContainerJobsError, _KeyErrorMessage):
    """A job id that is not in the store."""


class SecretNotFound(ContainerJobsError, _KeyErrorMessage):
    """A secret the launching manager's source does not have, or cannot read. The
    message names the secret, never a value."""


class HostUnavailable(ContainerJobsError):
    """A Docker host that does not answer, or that no job may be placed on."""


class NoWorkerAvailable(ContainerJobsError):
    """Raised by `JobManager.wait` and `JobManager.run` when, for the manager's
    ``no_worker_timeout``, nothing could run the job waited for: no host of this
    manager could take it, and no other manager held a lease on the store.

    The message says what was tried: each host and its last health error, and the
    store no worker has a lease on. The job itself is left as it is (pending, most
    often): a worker that starts later runs it, unless it is cancelled.

    Attributes:
        job_id: the job waited for.
    """

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id

    def __reduce__(self) -> tuple[type[NoWorkerAvailable], tuple[str, str]]:
        return type(self), (str(self), self.job_id)  # pickles whole (a process pool)


class ExecutorError(ContainerJobsError):
    """The container engine refused or failed an operation."""


class ImageNotFound(ExecutorError):
    """An image that is not on the host and that the pull policy forbids pulling."""


class StorageError(ContainerJobsError):
    """The job store failed to read or write."""


class Unschedulable(ExecutorError):
    """An orchestrator found no node that may run the job now (its placement
    constraints match none): the job waits in pending and is tried again."""
