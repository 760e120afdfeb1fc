"""A one-process server whose predictions never end unless called off (the shutdown test).

    python -m tests.integration.endless_server   (settings from KATO_* like ``python -m kato_server``)

Every GetPredictions computes (``processor.predictions``) until its budget is cancelled —
its call gave up or the server is stopping — and then stops at its next check, as a real
alignment does (``engine/budget.py``). A test can then tell "stopped" from "ran to the end"
without timing anything: what is not stopped never ends. The fault is put in the processor
module the use cases call through; nothing in the service knows of it.
"""

from __future__ import annotations

import asyncio
import time

from kato_grpc import logs
from kato_grpc.engine import processor
from kato_grpc.engine.budget import Budget
from kato_grpc.engine.knowledge import KnowledgeView
from kato_grpc.engine.predict import PredictionSet
from kato_grpc.internal.v1 import session_pb2 as storage
from kato_grpc.settings import Settings
from kato_server.app import serve


def endless(state: storage.SessionState, kb: KnowledgeView, budget: Budget | None = None) -> PredictionSet:
    assert budget is not None, "the service gives every prediction a budget"
    while True:
        budget.check()  # raises once the computation is called off
        time.sleep(0.001)  # lets the event loop's thread have the GIL


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_level, settings.log_json)
    assert settings.redis_url and settings.mongodb_uri, "the test gives its stores"
    processor.predictions = endless
    asyncio.run(serve(settings, settings.redis_url, settings.mongodb_uri))


if __name__ == "__main__":
    main()
