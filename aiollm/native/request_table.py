"""Python side of the request table: allocation, zero-copy numpy columns, C batch helpers.

The table is one C array of `aio_req` structs. `table.col("output_len")` is a numpy view of
that field over all slots (writes go straight to C memory); `table.gather(field, slots)`
copies a field of chosen slots into a contiguous array in one C call; `table.stop_check`
appends a token to every slot of a batch and reports which finished.

Stop token ids: a record holds the first RECORD_STOP_IDS of its request's (the C stop check
reads them); a request with more keeps the rest in a set on the host, checked after the C
call for the few slots that have one. A request may thus have any number of stop ids
without widening every record (and the pinned table) for the rare one that has many.
"""

from __future__ import annotations

import enum

import numpy as np

from aiollm.native._table import ffi, lib


class ReqState(enum.IntEnum):
    FREE = lib.AIO_FREE
    WAITING = lib.AIO_WAITING
    RUNNING = lib.AIO_RUNNING
    PAUSED = lib.AIO_PAUSED
    FINISHED = lib.AIO_FINISHED
    ABORTED = lib.AIO_ABORTED


class FinishReason(enum.IntEnum):
    NONE = lib.AIO_FINISH_NONE
    STOP = lib.AIO_FINISH_STOP
    LENGTH = lib.AIO_FINISH_LENGTH
    ABORT = lib.AIO_FINISH_ABORT

    @property
    def label(self) -> str | None:
        return None if self is FinishReason.NONE else self.name.lower()


class TableError(RuntimeError):
    """Misuse of the request table: full, slot out of range, or slot not in use."""


_NUMPY_OF_C = {
    "int64_t": "<i8",
    "int32_t": "<i4",
    "float": "<f4",
}


def _struct_dtype() -> np.dtype:
    """A numpy dtype with the exact C layout of aio_req (offsets from cffi)."""
    ctype = ffi.typeof("aio_req")
    names, formats, offsets = [], [], []
    for name, field in ctype.fields:
        t = field.type
        if t.kind == "array":
            fmt = (_NUMPY_OF_C[t.item.cname], (t.length,))
        else:
            fmt = _NUMPY_OF_C[t.cname]
        names.append(name)
        formats.append(fmt)
        offsets.append(field.offset)
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": ffi.sizeof(ctype)}
    )


REQ_DTYPE = _struct_dtype()
RECORD_STOP_IDS = REQ_DTYPE.fields["stop_ids"][0].shape[0]  # stop ids a record holds (8)


class _GatherPlan:
    """Source offsets, sizes and packed destination layout for a tuple of fields."""

    def __init__(self, fields: tuple[str, ...]):
        for f in fields:
            if f not in REQ_DTYPE.names or REQ_DTYPE.fields[f][0].shape:
                raise KeyError(f"gather_fields takes scalar fields of the table, not {f!r}")
        self.dtype = np.dtype([(f, REQ_DTYPE.fields[f][0]) for f in fields])
        src = np.array([REQ_DTYPE.fields[f][1] for f in fields], dtype=np.int32)
        sizes = np.array([REQ_DTYPE.fields[f][0].itemsize for f in fields], dtype=np.int32)
        dst = np.array([self.dtype.fields[f][1] for f in fields], dtype=np.int32)
        self._keep = (src, sizes, dst)
        self.src, self.sizes, self.dst = (ffi.from_buffer("int32_t[]", a) for a in self._keep)


class RequestTable:
    """A fixed number of request slots in one C array.

    pin_memory=True page-locks the array (needs CUDA) so batch metadata gathered from it
    can be copied to the GPU asynchronously.
    """

    def __init__(self, capacity: int = 4096, pin_memory: bool = False):
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"request table capacity must be a positive int, got {capacity!r}")
        ptr = lib.aio_table_new(capacity)
        if ptr == ffi.NULL:
            raise MemoryError(f"could not allocate a request table of {capacity} slots")
        self._t = ffi.gc(ptr, lib.aio_table_delete)
        self.capacity = capacity
        nbytes = capacity * REQ_DTYPE.itemsize
        self._buf = ffi.buffer(self._t.slots, nbytes)
        self.array = np.frombuffer(self._buf, dtype=REQ_DTYPE)
        self._plans: dict[tuple[str, ...], _GatherPlan] = {}
        # stop ids past a record's RECORD_STOP_IDS, by slot; whether a slot has any
        self._more_stop_ids: dict[int, frozenset[int]] = {}
        self._has_more_stop_ids = np.zeros(capacity, dtype=bool)
        self.pinned = False
        if pin_memory:
            self._pin(nbytes)

    def _pin(self, nbytes: int) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("pin_memory=True needs a CUDA device")
        addr = int(ffi.cast("uintptr_t", self._t.slots))
        err = torch.cuda.cudart().cudaHostRegister(addr, nbytes, 0)
        if int(err) != 0:
            raise RuntimeError(f"cudaHostRegister of the request table failed: {err}")
        self.pinned = True

    def __del__(self) -> None:
        if getattr(self, "pinned", False):
            try:
                import torch

                torch.cuda.cudart().cudaHostUnregister(int(ffi.cast("uintptr_t", self._t.slots)))
            except Exception:  # interpreter shutdown: the process is going away anyway
                pass

    # -- allocation ------------------------------------------------------------------------
    @property
    def n_free(self) -> int:
        return int(self._t.n_free)

    @property
    def n_used(self) -> int:
        return self.capacity - int(self._t.n_free)

    def alloc(self) -> int:
        slot = lib.aio_alloc(self._t)
        if slot == lib.AIO_ERR_FULL:
            raise TableError(f"request table is full (all {self.capacity} slots in use)")
        return int(slot)

    def free(self, slot: int) -> None:
        rc = lib.aio_free(self._t, slot)
        if rc == lib.AIO_ERR_RANGE:
            raise TableError(f"slot {slot} is out of range [0, {self.capacity})")
        if rc == lib.AIO_ERR_NOT_IN_USE:
            raise TableError(f"slot {slot} is already free")
        self._drop_more_stop_ids(slot)

    # -- columns and gathers ----------------------------------------------------------------
    def col(self, field: str) -> np.ndarray:
        """Zero-copy view of one field over all slots."""
        if field not in REQ_DTYPE.names:
            raise KeyError(f"request table has no field {field!r}; fields: {REQ_DTYPE.names}")
        return self.array[field]

    def __getitem__(self, slot: int) -> np.void:
        """One slot's record (a view: assignments write through)."""
        self._check_range(slot)
        return self.array[slot]

    def _check_range(self, slot: int) -> None:
        if not 0 <= slot < self.capacity:
            raise TableError(f"slot {slot} is out of range [0, {self.capacity})")

    def _slots_arg(self, slots: np.ndarray):
        slots = np.ascontiguousarray(slots, dtype=np.int32)
        bad = lib.aio_check_slots(self._t, ffi.from_buffer("int32_t[]", slots), len(slots))
        if bad >= 0:
            s = int(slots[bad])
            if not 0 <= s < self.capacity:
                raise TableError(f"slot {s} is out of range [0, {self.capacity})")
            raise TableError(f"slot {s} is not in use")
        return slots, ffi.from_buffer("int32_t[]", slots)

    def gather(self, field: str, slots: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Copy `field` of the given (in-use) slots into a contiguous array, in one C call."""
        if field not in REQ_DTYPE.names:
            raise KeyError(f"request table has no field {field!r}")
        fdtype, offset = REQ_DTYPE.fields[field][:2]
        if fdtype.shape:
            raise ValueError(f"gather works on scalar fields; {field!r} is an array field")
        slots, cslots = self._slots_arg(slots)
        if out is None:
            out = np.empty(len(slots), dtype=fdtype)
        elif out.dtype != fdtype or out.shape != (len(slots),) or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous {fdtype} array of shape ({len(slots)},)")
        fn = lib.aio_gather64 if fdtype.itemsize == 8 else lib.aio_gather32
        fn(self._t, cslots, len(slots), offset, ffi.from_buffer(out))
        return out

    def gather_fields(self, fields: tuple[str, ...], slots: np.ndarray) -> np.ndarray:
        """Several scalar fields of the given slots in one C call, as a packed record array
        (`out["seed"]` is a view of one column)."""
        plan = self._plans.get(fields)
        if plan is None:
            plan = self._plans[fields] = _GatherPlan(fields)
        slots, cslots = self._slots_arg(slots)
        out = np.empty(len(slots), dtype=plan.dtype)
        lib.aio_gather_fields(self._t, cslots, len(slots), plan.src, plan.sizes, plan.dst,
                              len(fields), plan.dtype.itemsize, ffi.from_buffer(out))
        return out

    def stop_check(
        self, slots: np.ndarray, tokens: np.ndarray, eos_ids: np.ndarray, now_ns: int
    ) -> np.ndarray:
        """Append tokens[i] to slots[i] (output_len += 1, timestamps) and return the finish
        reason of each (FinishReason values; 0 means it goes on). A token ends its request
        with STOP when it is one of the request's stop ids or one of eos_ids (unless
        ignore_eos), once min_new_tokens are out; else with LENGTH at max_new_tokens."""
        slots, cslots = self._slots_arg(slots)
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        eos_ids = np.ascontiguousarray(eos_ids, dtype=np.int32)
        if tokens.shape != slots.shape:
            raise ValueError(f"{len(tokens)} tokens for {len(slots)} slots")
        finished = np.empty(len(slots), dtype=np.int32)
        lib.aio_stop_check(
            self._t,
            cslots,
            ffi.from_buffer("int32_t[]", tokens),
            len(slots),
            ffi.from_buffer("int32_t[]", eos_ids),
            len(eos_ids),
            now_ns,
            ffi.from_buffer("int32_t[]", finished),
        )
        if self._more_stop_ids:
            self._check_more_stop_ids(slots, tokens, now_ns, finished)
        return finished

    def _check_more_stop_ids(self, slots: np.ndarray, tokens: np.ndarray, now_ns: int,
                             finished: np.ndarray) -> None:
        """The C check's rule for the stop ids past the records': a stop id ends a request
        (before max_new_tokens would) once min_new_tokens are out."""
        for i in np.flatnonzero(self._has_more_stop_ids[slots]):
            if finished[i] == FinishReason.STOP:
                continue
            rec = self.array[slots[i]]
            if (rec["output_len"] >= rec["min_new_tokens"]
                    and int(tokens[i]) in self._more_stop_ids[int(slots[i])]):
                finished[i] = rec["finish_reason"] = FinishReason.STOP
                rec["t_finish"] = now_ns

    def set_stop_ids(self, slot: int, ids: list[int]) -> None:
        """The stop token ids of the request in `slot` (any number; ids in [0, 2**31))."""
        self._check_range(slot)
        rec = self.array[slot]
        head = ids[:RECORD_STOP_IDS]
        rec["n_stop"] = len(head)
        rec["stop_ids"][: len(head)] = head
        self._drop_more_stop_ids(slot)
        if len(ids) > RECORD_STOP_IDS:
            self._more_stop_ids[slot] = frozenset(ids[RECORD_STOP_IDS:])
            self._has_more_stop_ids[slot] = True

    def _drop_more_stop_ids(self, slot: int) -> None:
        if self._more_stop_ids.pop(slot, None) is not None:
            self._has_more_stop_ids[slot] = False

    def stop_ids(self, slots: np.ndarray) -> np.ndarray:
        """Every stop token id of each of `slots` (in use): [len(slots), K] int64, row i the
        ids of slots[i] in no particular order, padded with -1 (K: the most any has)."""
        slots = self._slots_arg(slots)[0]
        n_head = self.gather("n_stop", slots)
        more = None
        if self._more_stop_ids and self._has_more_stop_ids[slots].any():
            more = [self._more_stop_ids.get(int(s), ()) for s in slots]
        n = n_head if more is None else n_head + np.fromiter(map(len, more), np.int32, len(slots))
        width = int(n.max(initial=0))
        out = np.full((len(slots), width), -1, dtype=np.int64)
        head = min(width, RECORD_STOP_IDS)
        out[:, :head] = np.where(np.arange(head) < n_head[:, None],
                                 self.array["stop_ids"][slots, :head], -1)
        for i, rest in enumerate(more or ()):
            if rest:
                out[i, RECORD_STOP_IDS: RECORD_STOP_IDS + len(rest)] = sorted(rest)
        return out

    def in_state(self, state: ReqState) -> np.ndarray:
        return np.flatnonzero(self.array["state"] == int(state)).astype(np.int32)
