"""The torch-free runtime: imports, sampling, stop tokens, batches, threads, input checks."""

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import ALL_ON, run_without_torch
from edgeseq.runtimes import SamplingOptions, load
from edgeseq.runtimes.sampling import choose_next

from edgeseq.errors import GenerateError


def test_runtime_runs_without_torch_onnx_models_or_exporters(artifacts):
    """An edge box has numpy and onnxruntime only: block the rest and generate."""
    _, art = artifacts.get(**ALL_ON)
    done = run_without_torch(art)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[[")


def test_cli_generate_runs_without_torch(artifacts):
    _, art = artifacts.get(**ALL_ON)
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("blocked import: torch")
        sys.meta_path.insert(0, Block())
        from edgeseq.cli import cli
        cli(["generate", {str(art)!r}, "--input-ids", "5 6 7", "--max-new-tokens", "3"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def model(artifacts):
    return load(artifacts.get(**ALL_ON)[1])


def test_seeded_sampling_is_reproducible_and_differs_by_seed(model):
    rows = [[5, 6, 7, 8]]
    opts = lambda seed: SamplingOptions(do_sample=True, temperature=1.5, seed=seed)  # noqa: E731
    a = model.generate(rows, 24, stop_tokens=[], sampling=opts(1)).tokens
    b = model.generate(rows, 24, stop_tokens=[], sampling=opts(1)).tokens
    c = model.generate(rows, 24, stop_tokens=[], sampling=opts(2)).tokens
    assert a == b and a != c


def test_top_k_one_is_greedy(model):
    rows = [[5, 6, 7, 8], [9, 10]]
    greedy = model.generate(rows, 16, stop_tokens=[]).tokens
    sampled = model.generate(rows, 16, stop_tokens=[], sampling=SamplingOptions(True, 0.8, top_k=1, seed=3)).tokens
    assert greedy == sampled


def test_stop_tokens_end_rows_independently(model):
    rows = [[5, 6, 7, 8], [9, 10, 11]]
    free = model.generate(rows, 16, stop_tokens=[]).tokens
    stop = free[0][3]
    stopped = model.generate(rows, 16, stop_tokens=[stop]).tokens
    assert stopped[0] == free[0][: free[0].index(stop) + 1]
    expected_1 = free[1][: free[1].index(stop) + 1] if stop in free[1] else free[1]
    assert stopped[1] == expected_1


def test_generate_is_safe_from_many_threads(model):
    rows = [[[5 + i, 6, 7 + i]] for i in range(8)]
    serial = [model.generate(r, 20, stop_tokens=[]).tokens for r in rows]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            assert list(pool.map(lambda r: model.generate(r, 20, stop_tokens=[]).tokens, rows)) == serial


@pytest.mark.parametrize(
    "ids, kwargs, message",
    [
        ([], {}, "input is empty"),
        ([[5], []], {}, "row 1 is empty"),
        ([[5, 48]], {}, "outside the vocabulary"),
        ([[5, -1]], {}, "outside the vocabulary"),
        ([[5, "x"]], {}, "not a token id"),
        ([list(range(3, 48)) * 4], {}, "longer than max_positions"),
        ([[5] * 150], {"max_new_tokens": 20}, "exceeds max_positions"),
        ([[5]], {"max_new_tokens": 0}, "must be >= 1"),
        ([[5]], {"sampling": SamplingOptions(True, temperature=0)}, "temperature"),
        ([[5]], {"sampling": SamplingOptions(True, top_p=0)}, "top_p"),
    ],
)
def test_bad_generate_input_is_named(model, ids, kwargs, message):
    with pytest.raises(GenerateError, match=message):
        model.generate(ids, **kwargs)


def test_top_p_keeps_the_nucleus_only():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    picks = {int(choose_next(logits, SamplingOptions(True, top_p=0.7), rng)[0]) for _ in range(300)}
    assert picks == {0, 1}


def test_top_k_keeps_the_k_best_only():
    logits = np.array([[0.0, 3.0, 1.0, 2.9]])
    rng = np.random.default_rng(0)
    picks = {int(choose_next(logits, SamplingOptions(True, top_k=2), rng)[0]) for _ in range(300)}
    assert picks == {1, 3}


def test_backend_takes_numpy_views_and_ort_values_alike(model):
    """The engine feeds numpy views of its buffers straight to the binding; OrtValue feeds
    (another caller's, or another binding's) go the public way and give the same outputs."""
    import onnxruntime as ort

    backend, graph = model.backend, model.engine.once
    ids = np.array([[5, 6, 7, 8]], dtype=np.int64)
    by_role = {"token_ids": ids, "mask": np.ones_like(ids), "positions": np.arange(4)[None]}
    feeds = {t["name"]: by_role[t["role"]] for t in model.engine.graph_inputs[graph]}
    direct = backend.run(graph, feeds)
    wrapped = backend.run(graph, {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()})
    assert direct.keys() == wrapped.keys()
    for name in direct:
        np.testing.assert_array_equal(backend.numpy(direct[name]), backend.numpy(wrapped[name]))
