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
    "pasta": dict(family="pasta", n_stacks=1),
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


def run_all(art, prompts, prefix_cache_mb, sampling=None, **load_options):
    with load(art, prefix_cache_mb=prefix_cache_mb, **load_options) as model:
        result = model.generate(prompts, max_new_tokens=NEW_TOKENS, sampling=sampling, return_logits=True)
        again = model.generate(prompts, max_new_tokens=NEW_TOKENS, sampling=sampling, return_logits=True)
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
    prompts = shared_prefix_prompts(vocab_size, count=60 if pasta else 200)
    off, _, none = run_all(art, prompts, 0)
    assert none is None
    on, warm, stats = run_all(art, prompts, 64)
    assert stats.hit_tokens > 10 * PREFIX_BLOCK and stats.evictions == 0, stats
    for cached in (on, warm):
        assert cached.tokens == off.tokens
        if not pasta:  # the first step's logits come from the prefill over restored blocks
            for a, b in zip(off.logits, cached.logits):
                assert np.array_equal(a[0], b[0])
    if pasta:
        return
    seeded = SamplingOptions(do_sample=True, temperature=1.0, seed=11)
    sampled_off, _, _ = run_all(art, prompts[:64], 0, sampling=seeded)
    sampled_on, sampled_warm, _ = run_all(art, prompts[:64], 64, sampling=seeded)
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
        def _evict(self):
            pinned = {k for k, b in self.blocks.items() if b.pins}
            super()._evict()
            if not pinned <= set(self.blocks):
                violations.append(pinned - set(self.blocks))

    with load(art) as model:
        bound = 2 * model.engine.block_bytes  # two blocks: a request with hits evicts around its pinned ones
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
    assert got == expected
    assert stats.evictions > 0 and stats.hit_tokens > 0, stats
    assert not violations


def test_a_pinned_block_outlives_the_bound_and_chains_go_tail_first():
    cache = PrefixCache("artifact", 2, capacity=3 * 8 * 4)
    keys = cache.keys([5, 6, 7, 8, 9, 10, 11, 12], None)

    def insert(key):
        return cache.insert(key, {"k": np.zeros((1, 2, 4), np.float32)}, {})

    chain = [insert(keys[0])]
    cache.release(chain)
    pinned = cache.lookup(keys[:1])
    chain = [insert(key) for key in keys[1:]]
    assert all(key in cache.blocks for key in keys)  # four pinned blocks: over the bound, none evicted
    assert cache.stats.bytes > cache.capacity and cache.stats.evictions == 0
    cache.release(pinned + chain)
    assert list(cache.blocks) == keys[2::-1] and cache.stats.evictions == 1  # the tail went first; the head is newest
    cache.release([insert(cache.keys([1, 2], None)[0])])
    assert keys[0] in cache.blocks and keys[2] not in cache.blocks  # the head is the most recently used


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
