"""The config file: LiteLLM proxy format plus `server:`; every error is one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenwire.server.config import Config, ConfigError, ServerSettings, load, parse

TOKENWIRE = str(Path(sys.executable).with_name("tokenwire"))


def test_defaults_are_the_contracts():
    s = ServerSettings()
    assert (s.api_keys, s.allowed_origins) == (None, None)
    assert (s.max_sessions, s.max_generations, s.max_message_bytes) == (10_000, 16, 1_048_576)
    assert (s.first_token_timeout, s.idle_timeout, s.drain_timeout) == (60, 60, 30)
    assert (s.repeated_chunk_limit, s.compression, s.send_timeout) == (100, False, 30)


def test_a_litellm_proxy_config_loads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        """
model_list:
  - model_name: fast
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:9000/v1
      api_key: os.environ/TW_TEST_KEY
    model_info: {id: one}
  - model_name: fast
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/TW_TEST_KEY}
router_settings: {routing_strategy: simple-shuffle}
litellm_settings: {drop_params: true}
general_settings: {master_key: unused}
environment_variables: {TW_TEST_KEY: from-the-file}
server:
  api_keys: [a, b]
  max_generations: 4
  first_token_timeout: 2.5
"""
    )
    config = load(path)
    assert config.model_names == ["fast"]
    assert config.model_list[0].litellm_params["api_key"] == "from-the-file"
    assert config.server.api_keys == ["a", "b"] and config.server.max_generations == 4
    assert config.server.first_token_timeout == 2.5
    assert config.with_models(["openai/gpt-4o", "fast"]).model_names == ["fast", "openai/gpt-4o"]
    os.environ.pop("TW_TEST_KEY", None)


def test_env_references_are_resolved_anywhere():
    raw = {"server": {"api_keys": ["os.environ/K1"]}}
    assert parse(raw, environ={"K1": "secret"}).server.api_keys == ["secret"]


def test_an_empty_file_is_the_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("\n")
    assert load(tmp_path / "empty.yaml") == Config()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("modle_list: []", "modle_list: unknown key; did you mean model_list?"),
        ("server: {max_sesions: 5}", "server.max_sesions: unknown key; did you mean max_sessions?"),
        ("server: {zzz: 5}", "server.zzz: unknown key"),
        (
            "router_settings: {num_retrys: 1}",
            "router_settings.num_retrys: unknown key; did you mean num_retries?",
        ),
        (
            "litellm_settings: {drop_param: true}",
            "litellm_settings.drop_param: unknown key; did you mean drop_params?",
        ),
        (
            "model_list: [{model_name: a, litellm_param: {model: m}}]",
            "model_list[0].litellm_param: unknown key; did you mean litellm_params?",
        ),
        ("server: {max_sessions: many}", "server.max_sessions: expected `int`, got `str`"),
        ("server: {send_timeout: 0}", "server.send_timeout: expected `float` > 0.0"),
        ("server: {compression: maybe}", "server.compression: expected `bool`"),
        (
            "model_list: [{model_name: x, litellm_params: {}}]",
            "model_list[0].litellm_params.model: required",
        ),
        ("model_list: [{litellm_params: {model: m}}]", "model_list[0].model_name: required"),
        (
            "model_list: [{model_name: x, litellm_params: {model: m}, extra: 1}]",
            "model_list[0].extra: unknown key",
        ),
        (
            "model_list: [{model_name: x, litellm_params: {model: m, api_key: os.environ/TW_NO}}]",
            "model_list[0].litellm_params.api_key: environment variable TW_NO is not set",
        ),
        ("server: [1, 2", "not valid YAML"),
        ("- just a list", "the top level must be a mapping"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus: 1", "bogus: unknown key"),
        ("server: {max_generations: -1}", "server.max_generations"),
        ("router_settings: {num_retrys: 1}", "did you mean num_retries?"),
    ],
)
def test_serve_stops_on_a_bad_config_with_one_line_and_status_2(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    done = subprocess.run(
        [TOKENWIRE, "serve", "--config", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenwire: config error: ")
    assert expected in lines[0] and str(path) in lines[0]


def test_serve_stops_on_a_missing_config_file(tmp_path):
    done = subprocess.run(
        [TOKENWIRE, "serve", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "cannot read" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_litellm_sections_keys_are_the_installed_litellms():
    """server/engines/litellm_keys.py is generated (scripts/litellm-keys) from the pinned
    LiteLLM: the keys it checks before importing LiteLLM are LiteLLM's own."""
    import litellm

    from tokenwire.server.engines import litellm_keys
    from tokenwire.server.engines.litellm_adapter import router_init

    assert sorted(litellm_keys.ROUTER_SETTINGS) == litellm_keys.router_keys(router_init())
    # The module grows attributes as it is used (lazily loaded model lists):
    # every generated key must still be one of its settings.
    assert set(litellm_keys.settings_keys(litellm)) >= litellm_keys.LITELLM_SETTINGS
    assert {"num_retries", "fallbacks", "routing_strategy"} <= litellm_keys.ROUTER_SETTINGS
    assert {"drop_params", "request_timeout"} <= litellm_keys.LITELLM_SETTINGS
