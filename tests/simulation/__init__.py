"""The simulation of the exactly-once learn path (docs/architecture.md §10).

A seeded scheduler drives the real transaction runner, outbox applier, relay and use cases
over the stores' in-memory twins, opening each store operation's gate one at a time — or
failing it, or crashing the process — and checks the service against a model after every
step. ``python -m tests.simulation`` (``make simulate``) runs it longer than the test does.
"""
