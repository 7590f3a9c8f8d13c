import argparse

import pytest

from sluiceway_common import settings
from sluiceway_common.settings import ConfigError

SIZE = settings.Option(
    "SLUICEWAY_BATCH_SIZE",
    settings.integer(1, 10),
    "batch size",
    default="5",
)


def parse(argv: list[str], options: tuple[settings.Option, ...]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_options(parser, options)
    return parser.parse_args(argv)


def test_flag_beats_environment_beats_default() -> None:
    options = (SIZE,)
    assert settings.resolve(parse([], options), options, {}) == {"batch_size": 5}
    env = {"SLUICEWAY_BATCH_SIZE": "7"}
    assert settings.resolve(parse([], options), options, env) == {"batch_size": 7}
    assert settings.resolve(parse(["--batch-size", "9"], options), options, env) == {
        "batch_size": 9
    }


@pytest.mark.parametrize("raw", ["0", "11", "five", "", "2.5"])
def test_bad_value_names_the_variable_and_what_is_allowed(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings.resolve(None, (SIZE,), {"SLUICEWAY_BATCH_SIZE": raw})
    message = str(caught.value)
    assert message.startswith("SLUICEWAY_BATCH_SIZE=")
    assert "an integer from 1 to 10" in message
    assert "\n" not in message


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--batch-size='x'"):
        settings.resolve(parse(["--batch-size", "x"], (SIZE,)), (SIZE,), {})


def test_missing_required_value() -> None:
    option = settings.Option("SLUICEWAY_SOURCE_URL", str, "source", allowed="a URL")
    with pytest.raises(ConfigError, match="SLUICEWAY_SOURCE_URL is not set: expected a URL"):
        settings.resolve(None, (option,), {})


def test_secret_value_is_masked_in_errors() -> None:
    env = {"SLUICEWAY_AMQP_URL": "http://user:hunter2@host/"}
    with pytest.raises(ConfigError) as caught:
        settings.resolve(None, (settings.AMQP_URL,), env)
    assert "hunter2" not in str(caught.value)
    assert "user:***@host" in str(caught.value)


def test_mask() -> None:
    assert settings.mask("postgresql://u:p@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert settings.mask("redis://cache:6379/0") == "redis://cache:6379/0"
    assert settings.mask("not a url") == "not a url"


@pytest.mark.parametrize("name", ["default", "a", "users-v2", "x" * 63])
def test_pipeline_names_allowed(name: str) -> None:
    assert settings.pipeline_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", "a-", "Users", "a.b", "a_b", "a b", "x" * 64, "a*", "a\n"]
)
def test_pipeline_names_refused(name: str) -> None:
    with pytest.raises(ValueError):
        settings.pipeline_name(name)


@pytest.mark.parametrize(
    ("parse", "raw"),
    [
        (settings.url("amqp", "amqps"), "http://host/"),
        (settings.url("amqp"), "amqp:///"),
        (settings.url("amqp"), "amqp://host:port/"),
        (settings.number(0, 1), "nan"),
        (settings.number(0, 1), "inf"),
        (settings.number(0, 1), "1.5"),
    ],
)
def test_parsers_refuse(parse: object, raw: str) -> None:
    with pytest.raises(ValueError):
        parse(raw)  # type: ignore[operator]


def test_source_headers_are_a_json_object_of_one_line_strings() -> None:
    assert settings.source_headers('{"Authorization": "Bearer t", "X-Api-Key": "k"}') == {
        "Authorization": "Bearer t", "X-Api-Key": "k"}  # fmt: skip
    assert settings.source_headers("{}") == {}


@pytest.mark.parametrize(
    "text",
    ['["a"]', "not json", '{"Bad Name": "x"}', '{"X": 1}', '{"X": "a\\r\\nInjected: 1"}'],
)
def test_bad_source_headers(text: str) -> None:
    with pytest.raises(ValueError):
        settings.source_headers(text)


def test_the_amqp_url_may_name_the_nodes_of_a_cluster() -> None:
    nodes = "amqp://u:p1@mq-0:5672/prod, amqp://u:p2@mq-1:5672/prod,amqps://u:p3@mq-2/prod"
    values = settings.resolve(None, (settings.AMQP_URL,), {"SLUICEWAY_AMQP_URL": nodes})
    assert settings.split_urls(values["amqp_url"]) == [
        "amqp://u:p1@mq-0:5672/prod",
        "amqp://u:p2@mq-1:5672/prod",
        "amqps://u:p3@mq-2/prod",
    ]
    assert settings.mask(values["amqp_url"]) == (
        "amqp://u:***@mq-0:5672/prod,amqp://u:***@mq-1:5672/prod,amqps://u:***@mq-2/prod"
    )
    assert sorted(settings.secret_values((settings.AMQP_URL,), values)) == ["p1", "p2", "p3"]


@pytest.mark.parametrize("nodes", [
    "amqp://mq-0/a,amqp://mq-1/b",  # two virtual hosts: not one cluster's queues
    "amqp://mq-0/,http://mq-1/",  # a part that is no amqp URL
    ",",  # no URL at all
])  # fmt: skip
def test_a_node_list_that_is_not_one_cluster_is_refused(nodes: str) -> None:
    with pytest.raises(ConfigError, match="SLUICEWAY_AMQP_URL"):
        settings.resolve(None, (settings.AMQP_URL,), {"SLUICEWAY_AMQP_URL": nodes})
