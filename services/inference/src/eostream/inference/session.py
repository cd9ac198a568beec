"""The live model and its hot swap.

A new model is built and warmed beside the old one, then swapped in with one reference
assignment under a lock. Requests hold a lease on the model they started with; the old model is
closed when its last lease is released, so no request fails during a swap and nothing is kept
alive afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from eostream.inference import metrics
from eostream.inference.errors import NoModelError
from eostream.inference.model import LoadedModel

log = logging.getLogger(__name__)


class _Slot:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.leases = 0
        self.retired = False


class ModelHolder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._slot: _Slot | None = None
        self._retired: set[_Slot] = set()
        self.swaps = 0

    @property
    def current(self) -> LoadedModel | None:
        slot = self._slot
        return slot.model if slot is not None else None

    @contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        """The model to use for one whole request or scene; it stays alive until released."""
        with self._lock:
            slot = self._slot
            if slot is None:
                raise NoModelError("no model is deployed yet; promote one (ModelPromoted)")
            slot.leases += 1
        try:
            yield slot.model
        finally:
            self._release(slot)

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.leases -= 1
            free = slot.retired and slot.leases == 0
            if free:
                self._retired.discard(slot)
                self._drained.notify_all()
        if free:
            self._free(slot)

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Make ``model`` live (it must already be warm); return the model it replaced."""
        with self._lock:
            old = self._slot
            self._slot = _Slot(model)
            self.swaps += 1
            free_now = old is not None and old.leases == 0
            if old is not None:
                old.retired = True
                if not free_now:
                    self._retired.add(old)
        metrics.MODEL_SWAPS.labels("ok").inc()
        metrics.set_model_info(
            model.info.name, model.info.version, model.provider, model.info.alias
        )
        if old is None:
            return None
        previous = old.model
        if free_now:
            self._free(old)
        else:
            log.info(
                "model %s v%s retired; draining %d in-flight request(s)",
                previous.info.name,
                previous.info.version,
                old.leases,
            )
        return previous

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until every retired model has been freed (tests and shutdown)."""
        with self._lock:
            return self._drained.wait_for(lambda: not self._retired, timeout=timeout)

    @staticmethod
    def _free(slot: _Slot) -> None:
        model = slot.model
        log.info("freeing model %s v%s", model.info.name, model.info.version)
        model.close()
        gc.collect()
        release_free_memory()


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them per thread arena otherwise, which
    reads as creeping RSS when sessions are built and freed from many threads)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return libc
