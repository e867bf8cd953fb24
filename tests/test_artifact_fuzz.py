"""Fuzz: whatever a manifest says, `load` answers a LoadError (or loads, and then generates
or answers a GenerateError), never a crash.

Hypothesis replaces one field of the fixture artifact's manifest (tests/fixtures/nash-t5-tiny)
at any depth with another JSON value, or truncates a file, and loads the copy."""

import json
import shutil
from pathlib import Path

import pytest
from edgeseq.runtimes import load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeseq.errors import EdgeseqError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nash-t5-tiny"
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())

json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=6)


def paths(value, prefix=()):
    """Every (path) into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))


PATHS = [p for p in paths(MANIFEST) if p and p[0] != "files"]  # files: covered by the checksum tests


def replaced(manifest, path, new):
    out = json.loads(json.dumps(manifest))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def load_or_load_error(folder: Path) -> None:
    """Loads, or refuses with an EdgeseqError; a model that loads generates or refuses too."""
    try:
        model = load(folder, threads=1)
    except EdgeseqError:
        return
    try:
        model.generate([[5, 6, 7]], max_new_tokens=2)
    except EdgeseqError:
        pass
    finally:
        model.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), new=json_values)
def test_any_manifest_field_gives_a_load_error_not_a_crash(workdir, path, new):
    folder = workdir / "artifact"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(FIXTURE, folder)
    (folder / "manifest.json").write_text(json.dumps(replaced(MANIFEST, path, new)))
    load_or_load_error(folder)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(MANIFEST["files"])), keep=st.floats(0, 0.99))
def test_a_truncated_file_gives_a_load_error(workdir, name, keep):
    folder = workdir / "artifact"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(FIXTURE, folder)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(EdgeseqError, match="altered|missing"):
        load(folder, threads=1)


def test_a_step_without_a_logits_output_is_a_load_error_naming_it(workdir):
    """The case the fuzz above found: no step graph's output has the logits role."""
    from edgeseq.errors import LoadError

    folder = workdir / "no-logits"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(FIXTURE, folder)
    manifest = json.loads(json.dumps(MANIFEST))
    for graph in manifest["decode"]["step"]:
        for output in manifest["graphs"][graph]["outputs"]:
            if output["role"] == "logits":
                output["role"] = "hidden"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LoadError, match=r"no graph of the step \(decoder_step\) has a logits output"):
        load(folder, threads=1)
