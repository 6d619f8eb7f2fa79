"""Prefix cache: a radix tree over token ids whose values are KV slots of the token-level pool.

The idea is RadixAttention (Zheng et al., "SGLang: Efficient Execution of Structured Language
Model Programs", 2024): keep the KV of finished requests in a radix tree keyed by their token
ids, so a later request that starts with the same tokens reuses that KV instead of computing
it again. Our KV pool has one slot per token, so a hit can end at any token, with no block
rounding.

`RadixTree` is the data structure: nodes hold a run of token ids (int32) and their KV slots
(int64), a reference count, and a last-use stamp. A node referenced by a running request
(and so every node on its path to the root) is never evicted; unreferenced leaves go first
in least-recently-used order. Matching and inserting compare whole runs of tokens with numpy,
never one token per Python iteration.

`PrefixCache` ties the tree to requests, the KV pool and the req_to_token map; the planner
calls it at four points:
- admit(): the longest cached prefix of a request's known tokens (always leaving the last
  one to compute, so the request gets its logits) goes into its req_to_token row, locked;
- on_chunk(): a prefill chunk just planned goes into the tree at once (locked by its request),
  so requests that arrive with the same prefix while it computes reuse it from the next step
  on (the device runs steps in order, so a later step reads KV an earlier one writes);
- release(): when a request finishes, is aborted or is paused, the KV it computed goes into
  the tree; duplicates of what the tree already holds go back to the pool;
- evict(): an allocation that finds the pool short frees unreferenced leaves.
The planner counts `evictable` tokens as free.

Cache salts (vLLM's `cache_salt`) split the tree between tenants: a request shares KV only with
requests of its salt (or of none, without one), so no tenant learns another's prompts by timing
hits. The root's children are keyed by (salt, first token) on salted paths: each salt's paths
are a subtree of the one root, nothing per salt is made or freed, and reference counts, LRU
eviction and flush treat every salt's nodes as one tree's.

A LongRoPE model served past its original context rotates the tokens of a prompt longer than
that context by other frequencies than the same tokens of a shorter prompt
(model/rope_rows.py): their keys differ, so such "long" requests take their own paths, as if
salted (salt_of: the pair ("long prompt", cache salt), which no user's salt, a string, equals).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import weakref

import numpy as np

from aiollm.model.kv_pool import KVPool, ReqToTokenTable
from aiollm.model.rope_rows import LongPrompts

log = logging.getLogger(__name__)
# the periodic hit-rate line: aiollm's statistics logger, which --disable-log-stats silences
stats_log = logging.getLogger("aiollm.stats")

_clock = itertools.count()  # last-use stamps: a counter orders uses without a clock read


class Node:
    __slots__ = ("key", "slots", "children", "_parent", "branch", "ref", "stamp", "__weakref__")

    def __init__(self, key: np.ndarray, slots: np.ndarray, parent: Node | None, branch=b""):
        self.key = key  # [n] int32 token ids of this edge
        self.slots = slots  # [n] int64 KV slots of those tokens
        self.children: dict[bytes | tuple, Node] = {}  # by RadixTree.branch()
        self.parent = parent
        self.branch = branch  # this node's key in parent.children
        self.ref = 0  # requests whose locked path goes through this node
        self.stamp = next(_clock)

    # weak: a node is in its parent's children, and a strong link back made every edge a
    # reference cycle, so a stopped engine's tree (its key and slot arrays) stayed until
    # Python's collector ran. Every node walked is reachable from the root (a locked path is
    # never evicted, a match is used before the next eviction), so its parent lives.
    @property
    def parent(self) -> Node | None:
        return self._parent() if self._parent is not None else None

    @parent.setter
    def parent(self, node: Node | None) -> None:
        self._parent = weakref.ref(node) if node is not None else None


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two 1-D int arrays."""
    n = min(a.shape[0], b.shape[0])
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


class RadixTree:
    """Token ids -> KV slots, with reference counts and LRU eviction of unreferenced leaves.

    Invariants: `evictable` is the number of tokens in nodes with ref == 0, `protected` the
    number in nodes with ref > 0; a node's ref is at least each child's ref.
    """

    def __init__(self):
        self.root = Node(np.zeros(0, np.int32), np.zeros(0, np.int64), None)
        self.root.ref = 1  # never evicted
        self.evictable = 0
        self.protected = 0

    @property
    def size(self) -> int:
        """Tokens (and KV slots) the tree holds."""
        return self.evictable + self.protected

    def branch(self, node: Node, first: bytes, salt: str | tuple | None
               ) -> bytes | tuple[str | tuple, bytes]:
        """The key in node.children of the child whose key starts with the token `first`
        (int32 bytes) on a path of cache salt `salt`: (salt, first) at the root, else first."""
        return first if salt is None or node is not self.root else (salt, first)

    def _split(self, node: Node, k: int) -> Node:
        """Cut node's edge after k tokens; returns the new upper node (depth + k). The lower
        part stays the same object, so a request that references it keeps its depth."""
        upper = Node(node.key[:k], node.slots[:k], node.parent, node.branch)
        upper.ref, upper.stamp = node.ref, node.stamp
        node.branch = node.key[k:k + 1].tobytes()
        upper.children[node.branch] = node
        node.parent.children[upper.branch] = upper
        node.key, node.slots, node.parent = node.key[k:], node.slots[k:], upper
        return upper

    def _walk(self, node: Node, key: np.ndarray, path: list | None, salt: str | tuple | None):
        """Follow key down from node, on `salt`'s paths, as far as the tree holds it, splitting
        the last edge if key ends or leaves it midway: (deepest node reached, tokens of key
        matched). Appends each node passed to path. Whole edges are compared as bytes (one
        memcmp), a partial one with numpy: the cost is a few µs per node, not per token."""
        kb = key.tobytes()  # int32: token i is kb[4i:4i+4]
        n, pos = key.shape[0], 0
        stamp = next(_clock)
        while pos < n:
            child = node.children.get(self.branch(node, kb[4 * pos:4 * pos + 4], salt))
            if child is None:
                break
            k = child.key.shape[0]
            if not (pos + k <= n and kb.startswith(child.key, 4 * pos)):
                k = common_prefix(child.key, key[pos:])
                child = self._split(child, k)
            child.stamp = stamp
            if path is not None:
                path.append(child)
            node, pos = child, pos + k
        return node, pos

    def match(self, key: np.ndarray, limit: int | None = None, salt: str | tuple | None = None
              ) -> tuple[Node, int, np.ndarray]:
        """Longest prefix of key[:limit] in the tree among the paths of cache salt `salt`
        (None: the unsalted ones): (node ending exactly there, its length, its KV slots as
        int64). Splits a node when the prefix ends inside it; marks the path used now."""
        path: list[Node] = []
        node, n = self._walk(self.root, key[:limit], path, salt)
        slots = np.concatenate([p.slots for p in path]) if path else self.root.slots
        return node, n, slots

    def insert(self, node: Node, key: np.ndarray, slots: np.ndarray, salt: str | tuple | None = None
               ) -> tuple[Node, int]:
        """Insert key (token ids that follow `node`'s path, of cache salt `salt`) with their
        slots. Where the tree already holds a prefix of key it keeps its own slots: returns
        (the node where key ends, how many tokens of key were there already); the caller
        frees its duplicates slots[:that many]. The rest of `slots` now belongs to the tree."""
        node, pos = self._walk(node, key, None, salt)
        if pos == key.shape[0]:
            return node, pos
        branch = self.branch(node, key[pos:pos + 1].tobytes(), salt)
        leaf = Node(key[pos:].copy(), slots[pos:].copy(), node, branch)
        node.children[branch] = leaf
        self.evictable += leaf.key.shape[0]  # unreferenced until someone locks it
        return leaf, pos

    def unreferenced(self, node: Node, seen: set[Node] | None = None) -> int:
        """Tokens on node's path that no request references (what locking it takes from
        the evictable count). With `seen`, the nodes counted are added to it and a node
        already in it ends the walk (its path was counted): locks of several paths taken
        together, each token counted once."""
        n = 0
        while node is not self.root and node.ref == 0:
            if seen is not None:
                if node in seen:
                    break
                seen.add(node)
            n += node.key.shape[0]
            node = node.parent
        return n

    def lock(self, node: Node) -> None:
        """A request now uses node's path: none of it may be evicted."""
        while node is not self.root:
            if node.ref == 0:
                n = node.key.shape[0]
                self.evictable -= n
                self.protected += n
            node.ref += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        while node is not self.root:
            node.ref -= 1
            assert node.ref >= 0, "prefix cache: unlock of a node nobody locked"
            if node.ref == 0:
                n = node.key.shape[0]
                self.evictable += n
                self.protected -= n
            node = node.parent

    def evict(self, n: int) -> list[np.ndarray]:
        """Remove unreferenced leaves, least recently used first, until at least n tokens are
        out (or nothing evictable is left); returns their KV slots."""
        heap = [(leaf.stamp, id(leaf), leaf) for leaf in self._leaves() if leaf.ref == 0]
        heapq.heapify(heap)
        freed, out = 0, []
        while freed < n and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            del parent.children[leaf.branch]
            out.append(leaf.slots)
            freed += leaf.key.shape[0]
            self.evictable -= leaf.key.shape[0]
            if parent is not self.root and not parent.children and parent.ref == 0:
                heapq.heappush(heap, (parent.stamp, id(parent), parent))
        return out

    def _leaves(self) -> list[Node]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node is not self.root:
                out.append(node)
        return out


class PrefixCache:
    """The radix tree bound to the KV pool and the req_to_token map: see the module doc."""

    def __init__(self, kv_pool: KVPool, req_to_token: ReqToTokenTable, metrics=None,
                 log_every_s: float = 60.0, long_prompts: LongPrompts | None = None):
        self.tree = RadixTree()
        self.long_prompts = long_prompts  # the model's (rope_rows.py), None: no long kind
        self.kv = kv_pool
        self.r2t = req_to_token
        self.metrics = metrics  # PrefixCacheMetrics or None
        self.queried = self.hit = self.evicted = 0  # prompt tokens asked for / found; evicted
        self._log_every = log_every_s
        self._last_log = time.monotonic()

    @property
    def evictable(self) -> int:
        return self.tree.evictable

    @property
    def size(self) -> int:
        return self.tree.size

    def salt_of(self, req) -> str | tuple | None:
        """The salt of req's paths in the tree: its cache salt, paired with "long prompt"
        for a request whose tokens read the rotary table's long rows (rope_rows.py)."""
        lp = self.long_prompts
        if lp is None or not lp.is_long(len(req.prompt_ids)):
            return req.cache_salt
        return ("long prompt", req.cache_salt)

    # -- request life --------------------------------------------------------------------
    def admit(self, req, match: tuple | None = None) -> int:
        """Give an admitted request (row assigned) the cached prefix of its tokens: writes
        the slots into its req_to_token row, locks them, sets req.kv_len. `match` is a
        result of match_for(req) taken since the last eviction. Returns the tokens reused."""
        node, n, slots = match if match is not None else self.match_for(req)
        first = req.cached_tokens < 0  # not a resume: count it for usage and the hit rate
        if first:
            req.cached_tokens = n
        if first and req.counted:  # a health probe is no client's prompt
            self.queried += len(req.prompt_ids)
            self.hit += n
            if self.metrics is not None:
                self.metrics.queried.inc(len(req.prompt_ids))
                self.metrics.hit.inc(n)
            self._maybe_log()
        self.tree.lock(node)
        req.cache_node, req.cache_len = node, n
        if n:
            self.r2t.write_row(req.row, 0, slots)
        req.kv_len = n
        return n

    def match_for(self, req) -> tuple[Node, int, np.ndarray]:
        """Longest cached prefix of req's known tokens, at most reuse_limit(req) long, that
        requests of its cache salt (and rotary kind: salt_of) computed."""
        limit = reuse_limit(req)
        return self.tree.match(known_tokens(req, limit), limit, self.salt_of(req))

    def on_chunk(self, req) -> None:
        """req's KV now covers req.kv_len tokens (planned this step): put the newly planned
        part in the tree, locked by req, unless the tree already extends req's path (another
        request computed those tokens meanwhile; release() sorts that out)."""
        node, start = req.cache_node, req.cache_len
        end = min(req.kv_len, len(req.prompt_ids) + len(req.output_ids))
        if end <= start:
            return
        key = known_tokens(req, end)
        salt = self.salt_of(req)
        if self.tree.branch(node, key[start:start + 1].tobytes(), salt) in node.children:
            return
        slots = self.r2t.slots_of(req.row, start, end)
        leaf, there = self.tree.insert(node, key[start:], slots, salt)
        assert there == 0
        self.tree.lock(leaf)
        self.tree.unlock(node)
        req.cache_node, req.cache_len = leaf, end

    def release(self, req) -> None:
        """req gives back its KV (finished, aborted or paused): what it computed goes into
        the tree, duplicates and tokens without a known id go back to the pool."""
        node, start = req.cache_node, req.cache_len
        if node is None:  # never admitted
            return
        end = min(req.kv_len, len(req.prompt_ids) + len(req.output_ids))
        if req.kv_len > start:
            row_slots = self.r2t.slots_of(req.row, start, req.kv_len)
            if end > start:
                key = known_tokens(req, end)[start:]
                _, there = self.tree.insert(node, key, row_slots[: end - start],
                                            self.salt_of(req))
                if there:
                    self.kv.free(row_slots[:there])
            if req.kv_len > end:
                self.kv.free(row_slots[max(end - start, 0):])
        self.tree.unlock(node)
        req.cache_node, req.cache_len = None, 0

    # -- room ----------------------------------------------------------------------------
    def evict(self, n: int) -> int:
        """Free at least n KV slots from unreferenced cached prefixes (fewer if there are not
        as many); returns how many were freed."""
        parts = self.tree.evict(n)
        if not parts:
            return 0
        slots = np.concatenate(parts)
        self.kv.free(slots)
        self.evicted += slots.shape[0]
        if self.metrics is not None:
            self.metrics.evicted.inc(slots.shape[0])
        return slots.shape[0]

    def flush(self) -> int:
        """Evict everything no request uses; returns the KV slots freed."""
        return self.evict(self.tree.evictable)

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log >= self._log_every:
            self._last_log = now
            stats_log.info("prefix cache: hit rate %.1f%% of %d prompt tokens, %d tokens "
                           "cached (%d evictable), %d evicted", self.hit_rate * 100,
                           self.queried, self.tree.size, self.tree.evictable, self.evicted)

    @property
    def hit_rate(self) -> float:
        return self.hit / self.queried if self.queried else 0.0


def known_tokens(req, n: int) -> np.ndarray:
    """The first n token ids of req (prompt, then output: all known on the host) as int32."""
    p = req.prompt_array
    if n <= p.shape[0]:
        return p[:n]
    return np.concatenate([p, np.asarray(req.output_ids[: n - p.shape[0]], np.int32)])


def reuse_limit(req) -> int:
    """How many of req's tokens a cache hit may cover: all but the last (its logits give
    the next token), none when prompt logprobs are asked for."""
    return 0 if _wants_prompt_logprobs(req) else req.num_tokens - 1


def _wants_prompt_logprobs(req) -> bool:
    # prompt logprobs need the logits of every prompt token: such a request computes its
    # whole prompt (the attribute names cover the API's variants)
    p = req.params
    return (getattr(p, "prompt_logprobs", None) is not None
            or bool(getattr(req, "needs_prompt_logprobs", False)))
