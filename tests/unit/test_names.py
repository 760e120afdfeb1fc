"""Pattern and vector names are KATO's (engine.md §1.4, 1.5; D-26, D-27)."""

from __future__ import annotations

import numpy as np
import pytest

from kato_grpc.engine.naming import pattern_name, vector_name


@pytest.mark.parametrize(
    ("events", "sha1"),
    [
        ([["a"], ["b"], ["c"]], "b98534b32c1d7489d4ce1a48724aa65aeecbdba9"),
        ([["alpha"], ["beta"], ["gamma"]], "24e0f524f26eecfb14849cf3b3b57c44f3e705c2"),
        ([["hello", "world"], ["bar", "foo"]], "0405596c4d7172818bfeb508925e83226d4c4971"),
        ([["it's"], ["x"]], "271339250f33fe945c5a24f7deb31f02ce16ddb5"),
    ],
)
def test_pattern_name_matches_kato(events: list[list[str]], sha1: str) -> None:
    assert pattern_name(events) == sha1


def test_event_structure_and_order_change_the_name() -> None:
    names = {pattern_name([["a", "b"]]), pattern_name([["a"], ["b"]]), pattern_name([["b"], ["a"]])}
    assert len(names) == 3


@pytest.mark.parametrize(
    ("vector", "name"),
    [
        ([1.0, 2.0, 3.0], "VCTR|fe5de4472f7e4d5c9cdd19cadebfa06fe3da8e43"),
        ([0.5, 0.5], "VCTR|5fd4ba00d0f8c4cf90ef2ba613c34939835927e1"),
    ],
)
def test_vector_name_matches_kato(vector: list[float], name: str) -> None:
    assert vector_name(np.asarray(vector)) == name


def test_vector_name_ignores_global_numpy_print_options() -> None:
    vector = np.asarray([0.1, 1 / 3])
    before = vector_name(vector)
    with np.printoptions(precision=2, linewidth=10, floatmode="fixed"):
        assert vector_name(vector) == before
