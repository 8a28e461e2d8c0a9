"""containerjobs: run jobs as Docker containers, with their whole lifecycle tracked."""

from ._dispatch import FirstAvailable as FirstAvailable
from ._dispatch import HostLoad as HostLoad
from ._dispatch import HostSelectionStrategy as HostSelectionStrategy
from ._dispatch import RoundRobin as RoundRobin
from ._dispatch import WeightedLeastLoaded as WeightedLeastLoaded
from ._dispatch import WeightedRandom as WeightedRandom
from ._errors import ContainerJobsError as ContainerJobsError
from ._errors import ExecutorError as ExecutorError
from ._errors import HostUnavailable as HostUnavailable
from ._errors import ImageNotFound as ImageNotFound
from ._errors import InvalidJobSpec as InvalidJobSpec
from ._errors import JobNotFound as JobNotFound
from ._errors import NoWorkerAvailable as NoWorkerAvailable
from ._errors import PolicyViolation as PolicyViolation
from ._errors import SecretNotFound as SecretNotFound
from ._errors import StorageError as StorageError
from ._errors import TemplateNotFound as TemplateNotFound
from ._errors import Unschedulable as Unschedulable
from ._hosts import DockerHost as DockerHost
from ._hosts import Host as Host
from ._hosts import RegistryAuth as RegistryAuth
from ._hosts import SwarmHost as SwarmHost
from ._hosts import TLSConfig as TLSConfig
from ._manager import JobManager as JobManager
from ._models import AttemptOutcome as AttemptOutcome
from ._models import EnvironmentTemplate as EnvironmentTemplate
from ._models import HostHealth as HostHealth
from ._models import Job as Job
from ._models import JobEvent as JobEvent
from ._models import JobSpec as JobSpec
from ._models import JobStatus as JobStatus
from ._models import LogLine as LogLine
from ._models import Mount as Mount
from ._models import NetworkAttachment as NetworkAttachment
from ._policy import SecurityPolicy as SecurityPolicy
from ._secrets import EnvSecrets as EnvSecrets
from ._secrets import FileSecrets as FileSecrets
from ._secrets import Secret as Secret
from ._secrets import SecretSource as SecretSource
from .executors._base import PullResult as PullResult
from .storage import InMemoryStorage as InMemoryStorage
from .storage import PostgresStorage as PostgresStorage
from .storage import SQLiteStorage as SQLiteStorage
from .storage import Storage as Storage
from .storage import storage_from_url as storage_from_url

__version__ = "0.1.0"

__all__ = [
    "AttemptOutcome",
    "ContainerJobsError",
    "DockerHost",
    "EnvSecrets",
    "EnvironmentTemplate",
    "ExecutorError",
    "FileSecrets",
    "FirstAvailable",
    "Host",
    "HostHealth",
    "HostLoad",
    "HostSelectionStrategy",
    "HostUnavailable",
    "ImageNotFound",
    "InMemoryStorage",
    "InvalidJobSpec",
    "Job",
    "JobEvent",
    "JobManager",
    "JobNotFound",
    "JobSpec",
    "JobStatus",
    "LogLine",
    "Mount",
    "NetworkAttachment",
    "NoWorkerAvailable",
    "PolicyViolation",
    "PostgresStorage",
    "PullResult",
    "RegistryAuth",
    "RoundRobin",
    "SQLiteStorage",
    "Secret",
    "SecretNotFound",
    "SecretSource",
    "SecurityPolicy",
    "Storage",
    "StorageError",
    "SwarmHost",
    "TLSConfig",
    "TemplateNotFound",
    "Unschedulable",
    "WeightedLeastLoaded",
    "WeightedRandom",
    "storage_from_url",
]
