"""Config is validated once, and its errors name the file, the key and the problem."""

from __future__ import annotations

import pytest

from config.settings import DEFAULT_CONFIG, ConfigError, load_config, parse_config
from tests.conftest import ROOT


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "cfg.toml")
    return str(exc.value)


def test_the_shipped_config_is_valid_and_fetches_nothing_remote():
    s = load_config(ROOT / DEFAULT_CONFIG)
    assert [src.name for src in s.sources] == ["demo-articles", "demo-feeds"]
    assert all(src.kind == "files" for src in s.sources)
    assert s.fetch.fetch_pages is False


def test_defaults_are_sensible():
    s = parse_config("")
    assert s.fetch.timeout > 0 and s.fetch.max_bytes >= 1_000_000
    assert s.fetch.user_agent.startswith("newsflow/")
    assert str(s.warehouse.path) == "warehouse/news.duckdb"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fetch]\ntimeout = -1\n", "cfg.toml: fetch.timeout: Input should be greater than 0"),
        ("[fetch]\ntimout = 3\n", "cfg.toml: fetch.timout: unknown key"),
        ("[wharehouse]\npath = 'x'\n", "cfg.toml: wharehouse: unknown key"),
        (
            "[[sources]]\nname = 'a'\nkind = 'rss'\nurl = 'http://x'\n",
            "cfg.toml: sources[0].kind: Input should be 'feed' or 'files'",
        ),
        (
            "[[sources]]\nname = 'a'\nkind = 'feed'\n",
            "cfg.toml: sources[0]: a feed source needs 'url'",
        ),
        (
            "[[sources]]\nname = 'a'\nkind = 'feed'\nurl = 'ftp://x/y'\n",
            "scheme must be http, https or file",
        ),
        ("[[sources]]\nname = 'a'\nkind = 'files'\n", "a files source needs 'path'"),
        (
            "[[sources]]\nname = 'A b'\nkind = 'files'\npath = 'x'\n",
            "cfg.toml: sources[0].name: must be lowercase",
        ),
        (
            "[[sources]]\nname = 'a'\nkind = 'files'\npath = 'x'\n"
            "[[sources]]\nname = 'a'\nkind = 'files'\npath = 'y'\n",
            "source name 'a' is used twice",
        ),
        ("[[sources]]\nname = 'a'\nkind = 'files'\npath = 'x'\nfetch_page = true\n",
         "cfg.toml: sources[0].fetch_page: unknown key"),
        ("not toml = = 1", "cfg.toml: not valid TOML"),
        ("[warehouse]\nmemory_limit = 'lots'\n",
         "cfg.toml: warehouse.memory_limit: 'lots' is not a size such as '512MB'"),
        ("[fetch]\nca_file = 'no/such/ca.pem'\n",
         "cfg.toml: fetch.ca_file: no/such/ca.pem: not a readable PEM file of certificates"),
        ("[fetch]\nca_file = 'README.md'\n",
         "cfg.toml: fetch.ca_file: README.md: not a readable PEM file of certificates"),
    ],
)  # fmt: skip
def test_errors_name_file_key_and_problem(text, message):
    assert message in problems(text)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load_config(tmp_path / "nope.toml")
