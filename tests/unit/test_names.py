"""Resource names (kato_grpc/names.py): made and parsed back to the same ids, for any node id."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kato_grpc import names

NODE = st.text(min_size=1, max_size=40) | st.sampled_from(["a/b", "x/patterns/y", "/", "patterns", "é"])
SHA1 = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)


@given(node=NODE, sha1=SHA1)
def test_names_parse_back_to_their_ids(node: str, sha1: str) -> None:
    assert names.parse_knowledge_base(names.knowledge_base(node)) == node
    name = names.pattern(node, sha1)
    assert name == names.pattern(node, "PTRN|" + sha1) == names.pattern_prefix(node) + sha1
    assert names.parse_pattern(name) == (node, sha1)  # from the right: "/patterns/" in a node id is fine
    assert names.pattern_id(name) == sha1 and names.kato_pattern_name(name) == "PTRN|" + sha1
    assert names.parse_session(names.session("s-" + sha1[:32])) == "s-" + sha1[:32]


def test_other_forms_are_not_names() -> None:
    assert names.parse_session("s-" + "0" * 32) is None
    assert names.parse_knowledge_base("demo") is None
    assert names.parse_pattern("knowledgeBases/demo/" + "0" * 40) is None
    assert names.pattern("demo", "") == "" and names.kato_pattern_name("") == ""
