"""The GC pause around snapshot decodes: off while any runs, back on after the last."""

from __future__ import annotations

import gc
import threading

from kato_server import memory_policy


def test_the_gc_is_paused_while_any_decode_runs_and_resumes_after_the_last() -> None:
    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def slow() -> None:
        inside.set()
        release.wait(10)
        seen.append(gc.isenabled())

    worker = threading.Thread(target=memory_policy.without_gc(slow))
    worker.start()
    assert inside.wait(10), "the slow decode started"  # else the overlap below tests nothing
    memory_policy.without_gc(lambda: seen.append(gc.isenabled()))()  # overlaps the slow one
    assert not gc.isenabled()  # the slow one still runs
    release.set()
    worker.join()
    assert seen == [False, False] and gc.isenabled()


def test_a_gc_switched_off_by_the_embedder_stays_off() -> None:
    gc.disable()
    try:
        memory_policy.without_gc(lambda: None)()
        assert not gc.isenabled()
    finally:
        gc.enable()
