"""Helpers the fake-fidelity tests share (tests/integration/test_fake_bedrock.py and
test_fake_sts.py): the ``bedrock_fake`` fixture, a Converse user turn, and a way to run the
blocking boto3/botocore calls off the event loop the fakes serve on.

A test module that needs ``bedrock_fake`` imports it by name (pytest finds fixtures among a
module's globals) and lists it in ``__all__``, so it does not read as an unused import.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest

from tests.fakes.bedrock import FakeBedrock

T = TypeVar("T")


def converse_user(text: str) -> list[dict[str, Any]]:
    """A Converse ``messages`` list of one user turn with one text block."""
    return [{"role": "user", "content": [{"text": text}]}]


async def in_thread(call: Callable[[], T]) -> T:
    """Run a blocking SDK call off the loop the fakes serve on."""
    return await asyncio.to_thread(call)


@pytest.fixture
async def bedrock_fake() -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock() as fake:
        yield fake
