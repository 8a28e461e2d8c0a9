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


def test_the_executor_package_exports_its_contract() -> None:
    import containerjobs.executors as executors

    public = {name for name in dir(executors) if not name.startswith("_")}
    assert set(executors.__all__) <= public  # (ruff's RUF022 keeps it sorted)
    for name in ("Executor", "LogReader", "LaunchRequest", "DockerExecutor", "OutputLine"):
        assert name in executors.__all__


def test_the_testing_package_hands_out_its_contract_suites() -> None:
    import containerjobs.testing as testing

    assert testing.__all__ == sorted(testing.__all__)
    for name in testing.__all__:
        assert getattr(testing, name).__module__.startswith("containerjobs.testing")
