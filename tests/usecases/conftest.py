"""Every test gets the whole service over the twins, built fresh (``harness.Kato``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.usecases.harness import Kato


@pytest.fixture
def kato() -> Iterator[Kato]:
    service = Kato()
    yield service
    service.close()
