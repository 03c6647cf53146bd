"""The operator's view: watch events and fresh lists merged by resourceVersion, so a list
drops what a watch gap hid and never undoes an event newer than itself."""

from __future__ import annotations

from rolegate_operator.store import Section, resource_version


def listed(*entries: tuple[str, int]) -> list[tuple[tuple[str, str], int, str]]:
    return [(("ns", name), version, f"{name}@{version}") for name, version in entries]


def test_a_list_drops_what_it_no_longer_holds() -> None:
    section: Section[str] = Section()
    section.put(("ns", "a"), 3, "a@3")
    section.put(("ns", "b"), 4, "b@4")  # deleted during a gap: no DELETED event ever came
    section.replace(listed(("a", 3)), 10, namespace=None)
    assert section.values() == ["a@3"]


def test_a_list_keeps_events_newer_than_itself() -> None:
    section: Section[str] = Section()
    section.put(("ns", "a"), 3, "a@3")
    # While the list (at 10) was in flight: a created at 11, b modified at 12, c deleted at 13.
    section.put(("ns", "new"), 11, "new@11")
    section.put(("ns", "b"), 12, "b@12")
    section.delete(("ns", "c"), 13)
    section.replace(listed(("a", 3), ("b", 9), ("c", 8)), 10, namespace=None)
    assert sorted(section.values()) == ["a@3", "b@12", "new@11"]
    assert section.tombstones == {("ns", "c"): 13}  # still newer than the last list

    section.replace(listed(("a", 3), ("b", 12), ("new", 11)), 20, namespace=None)
    assert section.tombstones == {}  # a list at 20 knows of the deletion at 13


def test_stale_events_change_nothing() -> None:
    section: Section[str] = Section()
    assert section.put(("ns", "a"), 5, "a@5")
    assert not section.put(("ns", "a"), 4, "a@4")
    section.delete(("ns", "a"), 6)
    assert not section.put(("ns", "a"), 5, "a@5")  # a late event of the deleted object
    assert section.put(("ns", "a"), 7, "a@7")  # created anew
    assert section.get(("ns", "a")) == "a@7"


def test_a_namespace_list_decides_for_its_namespace_only() -> None:
    section: Section[str] = Section()
    section.put(("one", "a"), 3, "one/a")
    section.put(("two", "b"), 4, "two/b")
    section.delete(("two", "gone"), 2)
    section.replace([], 10, namespace="one")
    assert section.values() == ["two/b"]
    assert section.tombstones == {("two", "gone"): 2}


def test_versions_that_are_not_integers_lose_to_the_list() -> None:
    assert resource_version("123") == 123
    assert resource_version("") == resource_version(None) == resource_version("x1") == -1
    section: Section[str] = Section()
    section.put(("ns", "a"), -1, "a?")
    section.replace(listed(("b", 1)), 5, namespace=None)
    assert section.values() == ["b@1"]


def test_a_late_event_does_not_bring_back_what_a_fresh_list_dropped() -> None:
    section: Section[str] = Section()
    section.put(("ns", "x"), 5, "x@5")
    section.replace([], 100, namespace="ns")  # x was deleted at some version <= 100
    assert not section.put(("ns", "x"), 40, "x@40")  # a MODIFIED kopf still had queued
    assert section.values() == []
    assert section.put(("ns", "x"), 120, "x@120")  # created again after the list
    assert section.values() == ["x@120"]
    assert section.put(("other", "y"), 40, "y@40")  # another namespace's list decides
