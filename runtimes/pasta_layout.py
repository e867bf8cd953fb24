"""PASTA's attention masks, position ids and per-thread targets for a spliced document.

The semantics training and inference share (docs/design.md §1 "PASTA"), computed once here,
torch-free, so that the training code and the runtime's tests build the same thing:

- the prompt and the main thread's tokens are thread -1; chunk j (`<async>` .. `</async>`,
  spliced right after promise j) is thread j;
- a chunk sees the main thread up to and including its promise, chunks spliced by an
  earlier `<sync/>`, and its own earlier tokens; never another live chunk;
- the main thread sees its own tokens, and a chunk only from the `<sync/>` that follows
  it on (the `<sync/>` token itself included);
- positions: promise j ends at position p_j; chunk j takes p_j+1, p_j+2, ... (past p_j+N
  when it overruns its promised N); the main thread resumes at p_j+N+1;
- each token's target is the next token of its own thread (none for a thread's last
  token, and none inside the prompt): `<async>` is never predicted, the runtime forces it.
"""

from dataclasses import dataclass

import numpy as np

from .pasta_lang import Kind, MainParser, PastaTags

MAIN = -1


@dataclass
class Layout:
    thread: np.ndarray  # [T] int: -1 main (prompt included), j for chunk j
    positions: np.ndarray  # [T] int64
    visible: np.ndarray  # [T, T] bool: query i may attend key j
    targets: np.ndarray  # [T] int64: the next token of the same thread, -1 for none


class LayoutError(ValueError):
    """The document is not a well-formed spliced PASTA document."""


def pasta_layout(ids: list[int], prompt_length: int, tags: PastaTags, partial: bool = False) -> Layout:
    """The layout of prompt + spliced answer (`ids`), whose first `prompt_length` are the prompt.
    `partial`: a document still being written may end inside a chunk, right after a
    promise, or at the malformed main-thread token that stopped it (what a sequential
    interpreter has at each step)."""
    n = len(ids)
    thread = np.full(n, MAIN, dtype=np.int64)
    positions = np.zeros(n, dtype=np.int64)
    start: dict[int, int] = {}  # chunk -> index of its first token
    sync_of: dict[int, int] = {}  # chunk -> index of the <sync/> that splices it
    open_chunks: list[int] = []  # chunks not yet spliced by a sync
    promised: int | None = None  # N of the promise just closed
    parser = MainParser(tags)
    next_main = 0
    chunk_count = 0
    i = 0
    while i < n:
        token = ids[i]
        if promised is not None:  # a promise just closed: its chunk follows
            if token != tags.async_:
                raise LayoutError(f"the promise closed at {i - 1} is not followed by its chunk")
            j, base = chunk_count, next_main - 1  # base: the position of the promise's last token
            chunk_count += 1
            start[j] = i
            k = 0
            while i < n:
                thread[i], positions[i] = j, base + 1 + k
                k += 1
                i += 1
                if ids[i - 1] == tags.end_async:  # the chunk's first token is <async>
                    break
            else:
                if not partial:
                    raise LayoutError(f"chunk {j} has no </async>")
            next_main = base + promised + 1
            open_chunks.append(j)
            promised = None
            continue
        positions[i] = next_main
        next_main += 1
        if i >= prompt_length:
            event = parser.feed(token)
            if event.kind is Kind.MALFORMED and not (partial and i == n - 1):  # what ends a partial document
                raise LayoutError(f"{event.reason} (at {i})")
            if event.kind is Kind.FORK:
                promised = event.promised
            elif event.kind is Kind.SYNC:
                for j in open_chunks:
                    sync_of[j] = i
                open_chunks = []
            elif event.kind is Kind.END and i != n - 1:
                raise LayoutError(f"tokens follow eos at {i}")
        i += 1
    if promised is not None and not partial:
        raise LayoutError("the last promise has no chunk")

    index = np.arange(n)
    causal = index[None, :] <= index[:, None]
    same = thread[None, :] == thread[:, None]
    key_main = (thread == MAIN)[None, :]
    query_main = (thread == MAIN)[:, None]
    # where each query's view of the main thread and of spliced chunks ends: a main token's
    # own index; a chunk token's chunk start (its promise is the token before)
    horizon = np.array([i if t == MAIN else start[t] for i, t in enumerate(thread)])
    synced_at = np.array([sync_of.get(t, n + 1) if t != MAIN else -1 for t in thread])  # per key
    main_keys = key_main & (query_main | (index[None, :] < horizon[:, None]))
    spliced_keys = ~key_main & (synced_at[None, :] <= np.where(query_main[:, 0], index, horizon - 1)[:, None])
    visible = causal & (same | main_keys | spliced_keys)

    targets = np.full(n, -1, dtype=np.int64)
    last: dict[int, int] = {}
    for i in range(n):
        t = int(thread[i])
        if t in last and last[t] >= prompt_length - 1:
            targets[last[t]] = ids[i]
        last[t] = i
    return Layout(thread, positions, visible, targets)
