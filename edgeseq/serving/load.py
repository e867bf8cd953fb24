"""Load on a running server, from client threads on 127.0.0.1 (stdlib HTTP only).

`load_report`: many clients, each sending requests of mixed lengths, greedy and seeded
sampling, some streamed; every result is compared with the same request made alone, and
the report gives requests/s, latency percentiles, the mean batch size from /metrics and
the server's resident memory before and after. `batching_report`: the same requests from
N clients at once against one client at a time, in the same run.
"""

import http.client
import json
import re
import statistics
import threading
import time
import urllib.parse
from dataclasses import dataclass

import numpy as np


@dataclass
class LoadRequest:
    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    seed: int | None = None
    stream: bool = False

    def body(self) -> dict:
        return {"prompt": self.prompt, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_k": self.top_k, "seed": self.seed, "stop": [], "stream": self.stream}


def mixed_requests(count: int, vocab: int, seed: int = 0) -> list[LoadRequest]:
    """Prompts of 2..24 ids, 8..48 new tokens; half greedy, half seeded sampling; a quarter streamed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        sampled = i % 2 == 1
        out.append(LoadRequest(rng.integers(3, vocab, size=int(rng.integers(2, 25))).tolist(), int(rng.integers(8, 49)),
                               0.8 if sampled else 0.0, 20 if sampled else 0, i if sampled else None, i % 4 == 3))
    return out


def send(url: str, request: LoadRequest, timeout: float = 120.0, api_key: str | None = None) -> list[int]:
    """One completion; the generated ids (read from the SSE events when streamed)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        connection.request("POST", "/v1/completions", json.dumps(request.body()), headers)
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
        if not request.stream:
            return json.loads(response.read())["choices"][0]["token_ids"]
        tokens = []
        for raw in response:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                break
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"]["message"])
                tokens += event["choices"][0]["token_ids"]
        return tokens
    finally:
        connection.close()


def scrape(url: str) -> dict[str, float]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(edgeseq_\S+) (\S+)$", text, re.M)}


def mean_batch(before: dict, after: dict) -> float:
    steps = after.get("edgeseq_batch_size_count", 0) - before.get("edgeseq_batch_size_count", 0)
    rows = after.get("edgeseq_batch_size_sum", 0) - before.get("edgeseq_batch_size_sum", 0)
    return rows / steps if steps else 0.0


def run_clients(url: str, per_client: list[list[LoadRequest]]) -> tuple[list[list[list[int]]], list[float], float]:
    """Each client thread sends its requests in turn; returns results, latencies, wall seconds."""
    results: list[list] = [[None] * len(reqs) for reqs in per_client]
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for i, request in enumerate(per_client[c]):
            start = time.perf_counter()
            try:
                results[c][i] = send(url, request)
            except BaseException as e:  # reported after the join
                errors.append(e)
                return
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(len(per_client))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed; first: {errors[0]}")
    return results, latencies, wall


def load_report(url: str, expected, requests: list[LoadRequest], clients: int, rss=None) -> dict:
    """`requests` split over `clients` threads after a warm-up pass; `expected(request)` is the
    request's tokens when made alone; `rss()` the server's resident MiB."""
    per_client = [requests[c::clients] for c in range(clients)]
    run_clients(url, [reqs[:1] for reqs in per_client])  # warm-up: every client once
    rss_warm = rss() if rss else None
    before = scrape(url)
    results, latencies, wall = run_clients(url, per_client)
    after = scrape(url)
    rss_end = rss() if rss else None
    mismatches = sum(results[c][i] != expected(r) for c, reqs in enumerate(per_client) for i, r in enumerate(reqs))
    return {
        "clients": clients, "requests": len(requests), "mismatches": mismatches,
        "requests_per_s": len(requests) / wall, "tokens_per_s": sum(len(t) for c in results for t in c) / wall,
        "p50_latency_s": statistics.median(latencies), "p99_latency_s": float(np.percentile(latencies, 99)),
        "mean_batch_size": mean_batch(before, after),
        "resident_mb_after_warmup": rss_warm, "resident_mb_after": rss_end,
        "resident_growth": (rss_end - rss_warm) / rss_warm if rss else None,
    }


def batching_report(url: str, clients: int = 8, per_client: int = 3, max_tokens: int = 64, rounds: int = 3,
                    vocab: int = 96) -> dict:
    """Tokens/s of `clients` concurrent clients against one client sending the same requests
    one at a time; rounds alternate the order, figures are medians."""
    rng = np.random.default_rng(1)
    requests = [LoadRequest(rng.integers(3, vocab, size=8).tolist(), max_tokens) for _ in range(clients * per_client)]
    tokens = len(requests) * max_tokens
    together, alone, batches = [], [], []
    for r in range(rounds):
        for phase in (("together", "alone") if r % 2 == 0 else ("alone", "together")):
            if phase == "together":
                before = scrape(url)
                _, _, wall = run_clients(url, [requests[c::clients] for c in range(clients)])
                batches.append(mean_batch(before, scrape(url)))
                together.append(tokens / wall)
            else:
                _, _, wall = run_clients(url, [requests])
                alone.append(tokens / wall)
    t, a = statistics.median(together), statistics.median(alone)
    return {"clients": clients, "requests": len(requests), "max_tokens": max_tokens, "rounds": rounds,
            "tokens_per_s": t, "one_client_tokens_per_s": a, "speedup": t / a,
            "mean_batch_size": statistics.median(batches)}
