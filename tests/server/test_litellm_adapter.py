"""The LiteLLM internals tokenwire relies on exist, with the parameters it passes.

Everything tokenwire uses of LiteLLM beyond its documented API goes through
``tokenwire.server.engines.litellm_adapter``; this test names each one that a new
LiteLLM release moved or renamed (``scripts/litellm-canary`` runs it against
the newest release).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from tokenwire.server.engines import litellm_adapter

SERVER = Path(litellm_adapter.__file__).parent


@pytest.mark.parametrize("name", sorted(litellm_adapter.INTERNALS))
def test_each_internal_exists_with_the_parameters_tokenwire_passes(name):
    owner, attribute, parameters = litellm_adapter.INTERNALS[name]
    assert hasattr(owner, attribute), f"LiteLLM no longer has {name}"
    target = getattr(owner, attribute)
    if parameters == ("*",):
        return
    assert callable(target), f"{name} is no longer callable"
    signature = inspect.signature(target)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return
    missing = [p for p in parameters if p not in signature.parameters]
    assert not missing, f"{name}{signature} no longer takes {missing}"


def test_only_the_adapter_reaches_into_litellm():
    pattern = re.compile(r"^\s*(from litellm\b|import litellm\b)", re.MULTILINE)
    offenders = [
        path.name
        for path in SERVER.glob("*.py")
        if path.name != "litellm_adapter.py" and pattern.search(path.read_text())
    ]
    assert offenders == []
