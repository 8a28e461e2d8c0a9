"""`containerjobs.__all__` and the package's public names must not drift apart."""

import containerjobs


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name for name in dir(containerjobs)
        if not name.startswith("_") and name not in {"executors", "storage", "testing", "cli"}
    }
    assert set(containerjobs.__all__) == public
    assert containerjobs.__all__ == sorted(containerjobs.__all__)


def test_every_exported_name_says_it_is_ours() -> None:
    for name in containerjobs.__all__:
        assert getattr(containerjobs, name).__module__.startswith("containerjobs")
