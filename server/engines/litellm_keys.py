"""The keys of the config's LiteLLM sections, known before LiteLLM is imported.

``router_settings`` are ``litellm.Router``'s keyword arguments and
``litellm_settings`` the ``litellm`` module's settings. Importing LiteLLM
takes seconds, and a typo there surfaced only then, as Router's
``TypeError`` with no file or key. ``config.parse`` checks both sections
against these sets first, and names a near key ("did you mean").

The sets are data, ``litellm_keys.json`` beside this module, generated
from the pinned LiteLLM by ``scripts/litellm-keys`` (with the two rules
below); ``tests/server/test_config.py`` checks them against the installed
LiteLLM, so a pin move that changes them is noticed.
"""

from __future__ import annotations

import inspect
import json
import types
from importlib import resources
from typing import Any, Final


def router_keys(init: Any) -> list[str]:
    """The keyword arguments of ``init``, the function that takes ``Router``'s
    (``litellm_adapter.router_init()``; the generator's rule)."""
    skip = {"self", "args", "kwargs", "model_list"}
    return sorted(p for p in inspect.signature(init).parameters if p not in skip)


def settings_keys(module: Any) -> list[str]:
    """The ``litellm`` module's settings: public, lower-case, non-callable values."""
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and name.islower()
        and not isinstance(value, types.ModuleType | type)
        and not callable(value)
    )


_DATA: Final = json.loads(resources.files(__package__).joinpath("litellm_keys.json").read_text())
LITELLM_VERSION: Final[str] = _DATA["litellm"]
"""The LiteLLM the sets were generated from."""
ROUTER_SETTINGS: Final = frozenset[str](_DATA["router_settings"])
LITELLM_SETTINGS: Final = frozenset[str](_DATA["litellm_settings"])
