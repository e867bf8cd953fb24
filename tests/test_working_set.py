"""The roofline's bandwidth is measured at the step's own working set (edgeseq/working_set.py)."""

from edgeseq import working_set


def test_the_level_follows_the_last_level_cache(monkeypatch):
    monkeypatch.setattr(working_set, "last_level_cache_bytes", lambda: 32 << 20)
    assert working_set.memory_level(14 << 20) == "last-level cache"
    assert working_set.memory_level(64 << 20) == "DRAM"
    monkeypatch.setattr(working_set, "last_level_cache_bytes", lambda: None)
    assert working_set.memory_level(1 << 20) == "unknown"


def test_a_measured_roofline_names_its_working_set():
    limit = working_set.roofline_at(1 << 20)
    assert limit["working_set_bytes"] == 1 << 20 and limit["bandwidth_gb_s"] > 0 and limit["memory_level"]
