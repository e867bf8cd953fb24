"""Prefix caching (runtimes/prefix_cache.py): turning it on changes nothing but the time.

Every family that can share a prompt prefix (StagFormer p = 1 and p = 2, split and not,
PASTA, RED with a causal encoder) gives the same greedy and seeded-sampling tokens, and
bit-identical first-step logits, with the cache on and off, over prompts that share
prefixes cut inside a block, at a block edge, and whole; under eviction pressure and 8
threads the results still equal the cache-off ones and no pinned block is evicted.
"""

import threading

import numpy as np
import pytest
from conftest import ALL_OFF, ALL_ON
from edgeseq.runtimes import SamplingOptions, load
from edgeseq.runtimes.prefix_cache import PrefixCache

from edgeseq.errors import GenerateError, LoadError
from edgeseq.graph_spec import PREFIX_BLOCK

# configurations the other test files compile too (the artifact cache shares them)
FAMILIES = {
    "stag-p1": dict(family="stagformer", n_stacks=1, n_layers=2),
    "stag-p2": dict(family="stagformer", n_stacks=2, n_layers=4),
    "stag-p2-unsplit": dict(family="stagformer", n_stacks=2, n_layers=4, split=False),
    "pasta-p1": dict(family="pasta", n_stacks=1),
    "pasta-p2": dict(family="pasta", n_stacks=2),
    "red-causal": dict(family="red", **ALL_ON),
}
NEW_TOKENS = 6


def shared_prefix_prompts(vocab: int, count: int = 200, seed: int = 0) -> list[list[int]]:
    """`count` prompts over 8 prefixes: cut inside a block, at a block edge, and prompts that
    are a whole prefix (every one of their blocks cached the second time)."""
    rng = np.random.default_rng(seed)
    lengths = [PREFIX_BLOCK - 1, PREFIX_BLOCK, PREFIX_BLOCK + 1, 2 * PREFIX_BLOCK, 2 * PREFIX_BLOCK + 7,
               3 * PREFIX_BLOCK, 3 * PREFIX_BLOCK + 5, 4 * PREFIX_BLOCK - 3]
    prefixes = [rng.integers(3, vocab, size=n).tolist() for n in lengths]
    prompts = []
    for i in range(count):
        prefix = prefixes[i % len(prefixes)]
        tail = (i // len(prefixes)) % 20  # 0: the prompt is the prefix itself
        prompts.append(prefix + rng.integers(3, vocab, size=tail).tolist())
    return prompts


def run_all(art, prompts, prefix_cache_mb, sampling=None):
    """The prompts once with the cache off; with it on, twice (cold, then warm: every
    whole prefix cached)."""
    with load(art, prefix_cache_mb=prefix_cache_mb) as model:
        result = model.generate(prompts, max_new_tokens=NEW_TOKENS, sampling=sampling, return_logits=True)
        again = model.generate(prompts, max_new_tokens=NEW_TOKENS, sampling=sampling, return_logits=True) \
            if prefix_cache_mb else None
        stats = model.engine.prefix_cache.stats if model.engine.prefix_cache is not None else None
    return result, again, stats


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cache_on_changes_nothing_but_the_time(artifacts, name):
    options = dict(FAMILIES[name])
    _, art = artifacts.get(**options)
    vocab = load(art, prefix_cache_mb=0)
    with vocab:
        vocab_size = vocab.config["vocab_size"]
        pasta = vocab.decoding.name == "pasta"
    prompts = shared_prefix_prompts(vocab_size)
    off, _, none = run_all(art, prompts, 0)
    assert none is None
    on, warm, stats = run_all(art, prompts, 64)
    assert stats.hit_tokens > 10 * PREFIX_BLOCK and stats.evictions == 0, stats
    for cached in (on, warm):
        assert cached.tokens == off.tokens
        if not pasta:  # the first step's logits come from the prefill over restored blocks
            for a, b in zip(off.logits, cached.logits):
                assert np.array_equal(a[0], b[0])
    seeded = SamplingOptions(do_sample=True, temperature=1.0, seed=11)
    sampled_off, _, _ = run_all(art, prompts[:32], 0, sampling=seeded)
    sampled_on, sampled_warm, _ = run_all(art, prompts[:32], 64, sampling=seeded)
    assert sampled_on.tokens == sampled_off.tokens == sampled_warm.tokens


def test_eviction_pressure_keeps_results_and_pinned_blocks(artifacts):
    """A bound of a few blocks, 64 requests over 8 prefixes from 8 threads: results equal the
    cache-off ones, blocks are evicted, and never one a request is reading."""
    _, art = artifacts.get(family="stagformer", n_stacks=2, n_layers=4)
    prompts = shared_prefix_prompts(48, count=64, seed=3)
    with load(art, prefix_cache_mb=0) as model:
        expected = [model.generate([p], max_new_tokens=NEW_TOKENS).tokens[0] for p in prompts]
    violations = []

    class Watched(PrefixCache):
        def _evict_one(self):
            pinned = {k for k, b in self.blocks.items() if b.pins}
            super()._evict_one()
            if not pinned <= set(self.blocks):
                violations.append(pinned - set(self.blocks))

    with load(art) as model:
        bound = 2 * model.engine.blocked.block_bytes  # two blocks: a request with hits evicts around its pinned ones
        model.engine.prefix_cache = Watched("watched", PREFIX_BLOCK, bound)
        got = [None] * len(prompts)

        def client(k):
            for i in range(k, len(prompts), 8):
                got[i] = model.generate([prompts[i]], max_new_tokens=NEW_TOKENS).tokens[0]

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stats = model.engine.prefix_cache.stats
        assert stats.evictions > 0, stats
        # eight threads over two slots may leave no chain whole for long; one prompt twice in
        # a row shows the bounded cache still serving hits that change nothing
        short = next(i for i, p in enumerate(prompts) if PREFIX_BLOCK < len(p) <= 2 * PREFIX_BLOCK)
        hits = stats.hit_tokens
        again = [model.generate([prompts[short]], max_new_tokens=NEW_TOKENS).tokens[0] for _ in range(2)]
        assert stats.hit_tokens > hits and again == [expected[short]] * 2, stats
    assert got == expected
    assert not violations


def test_pinned_blocks_are_never_evicted_and_chains_go_tail_first():
    cache = PrefixCache("artifact", 2, capacity=3 * (2 * 2 * 4 * 4))  # three slots of [2, 2, 4] float32

    def insert(key):
        return cache.insert(key, {"k": np.full((2, 2, 4), len(cache.blocks), np.float32)}, {})

    keys = cache.keys([5, 6, 7, 8, 9, 10, 11, 12], None)
    cache.release([insert(keys[0])])
    pinned = cache.lookup(keys[:1])
    chain = [insert(key) for key in keys[1:3]]
    assert insert(keys[3]) is None  # every slot holds a pinned block: not kept, none evicted
    assert list(cache.blocks) == keys[:3] and cache.stats.evictions == 0 and cache.stats.bytes <= cache.capacity
    cache.release(pinned + chain)
    assert list(cache.blocks) == keys[2::-1]  # released head-most-recent
    other = cache.keys([1, 2], None)[0]
    cache.release([insert(other)])
    assert keys[0] in cache.blocks and keys[2] not in cache.blocks and cache.stats.evictions == 1  # the tail went
    assert np.array_equal(cache.lookup([keys[0]])[0].entries["k"], np.zeros((2, 2, 4)))  # its slot kept its bits


def test_keys_chain_over_the_whole_prefix_the_artifact_and_the_salt():
    cache = PrefixCache("artifact-a", 4, 1 << 20)
    a = cache.keys([1, 2, 3, 4, 5, 6, 7, 8, 9], None)
    assert len(a) == 2  # whole blocks only
    assert cache.keys([1, 2, 3, 4, 5, 6, 7, 8], None) == a
    assert cache.keys([0, 2, 3, 4, 5, 6, 7, 8], None)[1] != a[1]  # block 2's key depends on block 1
    assert cache.keys([1, 2, 3, 4, 5, 6, 7, 8], "tenant")[0] != a[0]
    assert PrefixCache("artifact-b", 4, 1 << 20).keys([1, 2, 3, 4], None)[0] != a[0]


def test_salts_share_no_block(artifacts):
    _, art = artifacts.get(family="stagformer", n_stacks=2, n_layers=4)
    prompt = shared_prefix_prompts(48, count=8)[6]
    with load(art) as model:
        stats = model.engine.prefix_cache.stats
        model.generate([prompt], max_new_tokens=2, cache_salt="a")
        model.generate([prompt], max_new_tokens=2, cache_salt="b")
        assert stats.hit_tokens == 0 and stats.blocks == 2 * (len(prompt) // PREFIX_BLOCK)
        model.generate([prompt], max_new_tokens=2, cache_salt="b")
        assert stats.hit_tokens == ((len(prompt) - 1) // PREFIX_BLOCK) * PREFIX_BLOCK
        with pytest.raises(GenerateError, match="cache_salt=5 is not a string"):
            model.generate([prompt], max_new_tokens=2, cache_salt=5)


def test_bad_bounds_and_families_that_cannot_share_a_prefix(artifacts):
    _, art = artifacts.get(family="stagformer", n_stacks=2, n_layers=4)
    for bad, message in ((-1, "is negative"), ("8", "is not a number"), (1e-6, "holds no block")):
        with pytest.raises(LoadError, match=message) as caught:
            load(art, prefix_cache_mb=bad)
        assert "\n" not in str(caught.value)
    _, bidirectional = artifacts.get(family="red", **ALL_OFF)
    with pytest.raises(LoadError, match="bidirectional attention"):
        load(bidirectional, prefix_cache_mb=8)
    with load(bidirectional) as model:  # the default: off where it cannot apply, no error
        assert model.engine.prefix_cache is None


def test_salts_over_http_share_no_block_and_bad_input_is_400(artifacts):
    """Through a real `edgeseq serve`: the OpenAI extension field `cache_salt`, the Prometheus
    gauges, and 400s for a salt that is not a string; a bad --prefix-cache-mb never starts."""
    import subprocess
    import sys

    import httpx

    from edgeseq.serving.process import serve_process

    _, art = artifacts.get(family="stagformer", n_stacks=2, n_layers=4)
    prompt = shared_prefix_prompts(48, count=8)[6]  # 3 whole blocks and a bit

    def metric(url, name):
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(f"edgeseq_prefix_cache_{name} "))

    with serve_process(art, "--prefix-cache-mb", "8") as (url, _):
        def complete(**extra):
            return httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 2, "temperature": 0, **extra}, timeout=60)

        first, other = complete(cache_salt="tenant-a"), complete(cache_salt="tenant-b")
        assert first.status_code == other.status_code == 200
        assert first.json()["choices"][0]["token_ids"] == other.json()["choices"][0]["token_ids"]
        assert metric(url, "hit_tokens") == 0 and metric(url, "blocks") == 2 * (len(prompt) // PREFIX_BLOCK)
        assert complete(cache_salt="tenant-b").status_code == 200
        assert metric(url, "hit_tokens") == ((len(prompt) - 1) // PREFIX_BLOCK) * PREFIX_BLOCK
        assert metric(url, "miss_tokens") > 0 and metric(url, "bytes") > 0
        bad = complete(cache_salt=5)
        assert bad.status_code == 400 and "cache_salt" in bad.json()["error"]["message"], bad.text
        assert complete().status_code == 200  # and it keeps serving
    refused = subprocess.run([sys.executable, "-m", "edgeseq.cli", "serve", str(art), "--prefix-cache-mb", "-1"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "prefix_cache_mb=-1.0 is negative" in refused.stderr


def test_bench_shared_prefix_measures_the_cache(artifacts):
    """`edgeseq bench --shared-prefix N`: both figures, from one load, with hits on the shared runs."""
    import json

    from click.testing import CliRunner

    from edgeseq.cli import cli

    _, art = artifacts.get(family="stagformer", n_stacks=2, n_layers=4)
    r = CliRunner().invoke(cli, ["bench", str(art), "--shared-prefix", "64", "--concurrency", "4", "--rounds", "1",
                                 "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert set(report["first_token_ms"]) == {"shared_on", "shared_off", "distinct_on", "distinct_off"}
    assert report["shared_speedup"] > 0 and report["distinct_slowdown"] > 0
    assert report["hit_tokens"] >= 4 * 2 * 64  # 4 clients x 2 repetitions read the whole prefix
    r = CliRunner().invoke(cli, ["bench", str(art), "--shared-prefix", "4096"])
    assert r.exit_code != 0 and "do not fit max_positions=160" in r.output


def test_a_failing_block_frees_its_rows_and_the_model_serves_on(artifacts, monkeypatch):
    """A graph that fails mid-prefill fails that call with a GenerateError; no row of it keeps a
    cache slot, and the next call is served."""
    from edgeseq.errors import StepError

    _, art = artifacts.get(family="stagformer", n_stacks=2, n_layers=4)
    prompts = shared_prefix_prompts(48, count=8)[3:5]  # two prompts of several blocks, admitted together
    with load(art) as model:
        expected = model.generate(prompts, max_new_tokens=2).tokens
        run = model.engine._run

        def failing(graph, feeds):
            if graph == model.engine.blocked.extend:
                raise StepError(f"graph {graph!r} failed: planted", "none")
            return run(graph, feeds)

        monkeypatch.setattr(model.engine, "_run", failing)
        with pytest.raises(GenerateError, match="planted"):
            model.generate(prompts, max_new_tokens=2, cache_salt="fresh")
        assert model.engine.cache.rows == 0
        monkeypatch.setattr(model.engine, "_run", run)
        assert model.generate(prompts, max_new_tokens=2).tokens == expected
