"""Prometheus metrics of one server, in a registry of its own (names prefixed edgeseq_).

Requests by outcome, prompt and generated tokens, the batch size of every decode step (an
observer on the scheduler), the queue depth and active rows (read at scrape time), time
to first token, time per output token and whole-request latency; running requests, and
the rows forked and segments spliced since load; the prefix cache's hit and miss prompt
tokens, evictions, resident blocks and bytes (runtimes/prefix_cache.py).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


PREFIX_CACHE_METRICS = {
    "hit_tokens": "Prompt tokens restored from prefix-cache blocks since load",
    "miss_tokens": "Prompt tokens prefilled since load (with the prefix cache on)",
    "evictions": "Prefix-cache blocks evicted (least recently used, unpinned) since load",
    "blocks": "Prefix-cache blocks resident",
    "bytes": "Bytes of the resident prefix-cache blocks",
}


def prefix_cache_stat(model, field: str) -> float:
    cache = model.engine.prefix_cache
    return float(getattr(cache.stats, field)) if cache is not None else 0.0


class ServerMetrics:
    def __init__(self, model):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeseq_requests", "Requests by outcome", ["outcome"], registry=r)
        self.prompt_tokens = Counter("edgeseq_prompt_tokens", "Prompt tokens received", registry=r)
        self.generated_tokens = Counter("edgeseq_generated_tokens", "Tokens generated", registry=r)
        self.batch_size = Histogram("edgeseq_batch_size", "Rows per decode step", buckets=BATCH_BUCKETS, registry=r)
        self.time_to_first_token = Histogram("edgeseq_time_to_first_token_seconds", "From request to its first token",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram("edgeseq_time_per_output_token_seconds",
                                               "Between consecutive tokens of a request", buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("edgeseq_request_seconds", "Whole request", buckets=LATENCY_BUCKETS, registry=r)
        queue = Gauge("edgeseq_queue_depth", "Requests waiting for a cache row", registry=r)
        queue.set_function(lambda: model.scheduler.queue_depth)
        active = Gauge("edgeseq_active_rows", "Rows in the running batch", registry=r)
        active.set_function(lambda: model.engine.cache.rows)
        # PASTA: a live thread is a row; forks and splices are how threads start and join
        running = Gauge("edgeseq_running_requests", "Requests with rows in the running batch", registry=r)
        running.set_function(lambda: len(model.scheduler.running))
        forks = Gauge("edgeseq_row_forks", "Rows forked from another row's cache since load (samples, PASTA threads)",
                      registry=r)
        forks.set_function(lambda: model.scheduler.forks)
        splices = Gauge("edgeseq_row_splices", "Cache segments spliced onto a row since load (PASTA syncs)", registry=r)
        splices.set_function(lambda: model.scheduler.splices)
        for field, text in PREFIX_CACHE_METRICS.items():
            gauge = Gauge(f"edgeseq_prefix_cache_{field}", text, registry=r)
            gauge.set_function(lambda field=field: prefix_cache_stat(model, field))
        self._observer = self.batch_size.observe
        model.scheduler.step_observers.append(self._observer)
        self.model = model

    def detach(self) -> None:
        observers = self.model.scheduler.step_observers
        if self._observer in observers:
            observers.remove(self._observer)
