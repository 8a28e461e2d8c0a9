"""Job stores: the `Storage` protocol, the backends that ship with containerjobs, and
what a backend of your own needs.

- The protocol: `Storage`, `StoredLine`, `ChooseHost`.
- The backends: `InMemoryStorage`, `SQLiteStorage`, `PostgresStorage` (which needs
  the extra ``containerjobs[postgres]`` only once opened).
- For writing a backend: `ClaimRound` and `dispatch_order` (the rules of
  `Storage.claim_next`); `dump_job` and `load_job` (a job as JSON text and back);
  `dump_record`, `load_record` and `job_output` (a job's record without its output,
  which a store keeps apart so that `Storage.list` reads no output);
  `format_datetime`, `parse_datetime` and `as_utc` (times as sortable text);
  `store_now` and `lease_expiry` (the leases' clock); `check_limit`,
  `check_log_sequence` and `status_filter` (the argument checks every backend makes
  the same way).

`containerjobs.testing.StorageContract` is the suite a backend's tests subclass.
"""

from ._base import ChooseHost as ChooseHost
from ._base import Storage as Storage
from ._base import StoredLine as StoredLine
from ._claim import ClaimRound as ClaimRound
from ._claim import dispatch_order as dispatch_order
from ._codec import as_utc as as_utc
from ._codec import check_limit as check_limit
from ._codec import check_log_sequence as check_log_sequence
from ._codec import dump_job as dump_job
from ._codec import dump_record as dump_record
from ._codec import format_datetime as format_datetime
from ._codec import job_output as job_output
from ._codec import lease_expiry as lease_expiry
from ._codec import load_job as load_job
from ._codec import load_record as load_record
from ._codec import parse_datetime as parse_datetime
from ._codec import status_filter as status_filter
from ._codec import store_now as store_now
from ._memory import InMemoryStorage as InMemoryStorage
from ._postgres import PostgresStorage as PostgresStorage  # asyncpg: loaded by open()
from ._sqlite import SQLiteStorage as SQLiteStorage
from ._url import storage_from_url as storage_from_url

__all__ = [
    "ChooseHost",
    "ClaimRound",
    "InMemoryStorage",
    "PostgresStorage",
    "SQLiteStorage",
    "Storage",
    "StoredLine",
    "as_utc",
    "check_limit",
    "check_log_sequence",
    "dispatch_order",
    "dump_job",
    "dump_record",
    "format_datetime",
    "job_output",
    "lease_expiry",
    "load_job",
    "load_record",
    "parse_datetime",
    "status_filter",
    "storage_from_url",
    "store_now",
]
