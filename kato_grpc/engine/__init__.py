"""The functional core: pure functions over protobuf messages, no IO, no locks.

Every processor maps (SessionState, KnowledgeView, input, config) to a new SessionState,
an output and a list of PatternWrites; it never mutates its inputs.
"""
