"""Each setting is stated once, in code: what the README's tables, ``.env.example``, the
Pipeline CRD and the chart's values schema say of it must be what the code says."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sluiceway_common import COMMAND_GROUP, settings
from sluiceway_common.settings import Option, Settings
from sluiceway_operator import crd
from sluiceway_operator.main import IMAGE_REPOSITORY, PEERING_LIFETIME, REPOSITORY, TAG

ROOT = Path(__file__).resolve().parents[2]
# Read by the writer and `migrate` from the environment alone, to find the Alembic scripts.
NOT_AN_OPTION = {"SLUICEWAY_MIGRATIONS_DIR"}


def modules() -> Iterator[ModuleType]:
    """Every module of sluiceway's installed packages (the library and each member)."""
    packages = {entry.module.partition(".")[0] for entry in entry_points(group=COMMAND_GROUP)}
    for name in sorted(packages | {"sluiceway_common"}):
        package = importlib.import_module(name)
        yield package
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not info.name.endswith("__main__"):
                yield importlib.import_module(info.name)


def stated() -> dict[str, Option]:
    """Each option as its module states it, by variable (what a Settings field changes of
    one, such as the demo's own default pipeline, is not the statement)."""
    found: dict[str, Option] = {}
    for module in modules():
        for value in vars(module).values():
            items = value if isinstance(value, tuple) else (value,)
            for item in items:
                if isinstance(item, Option):
                    found.setdefault(item.env, item)
    return found


def settings_classes() -> list[type[Settings]]:
    return sorted(
        {
            value
            for module in modules()
            for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, Settings) and value is not Settings
        },
        key=lambda cls: cls.__qualname__,
    )


def readme_rows() -> dict[str, str]:
    """The README's configuration tables: variable -> its default cell."""
    text = (ROOT / "README.md").read_text()
    return dict(re.findall(r"^\| `(SLUICEWAY_[A-Z_]+)` \| ([^|]*) \|", text, re.M))


def env_example() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^#? ?(SLUICEWAY_[A-Z_]+)=(.*)$", text, re.M))


def test_every_settings_class_is_made_of_settings_named_as_their_variables() -> None:
    classes = settings_classes()
    assert {cls.__name__ for cls in classes} >= {"FetcherSettings", "WriterSettings",
                                                  "DemoSettings"}  # fmt: skip
    for cls in classes:
        options = cls.options()
        assert [option.dest for option in options] == [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


def test_a_field_named_otherwise_than_its_setting_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Wrong(Settings):
        batch: int = settings.setting(settings.BATCH_SIZE)

    with pytest.raises(TypeError, match=r"Wrong\.batch is not a setting of that name"):
        Wrong.options()


def test_the_readme_lists_every_setting_with_its_default() -> None:
    options, rows = stated(), readme_rows()
    assert set(rows) == set(options) | NOT_AN_OPTION
    for env, option in options.items():
        cell = rows[env]
        if option.default is None:
            assert "required" in cell, env
        elif option.default == "":
            assert "empty" in cell, env
        else:
            assert f"`{option.default}`" in cell, (env, option.default, cell)


def test_env_example_lists_every_setting_at_its_default() -> None:
    options, example = stated(), env_example()
    assert set(options) | NOT_AN_OPTION <= set(example)
    for env, option in options.items():
        if option.default is None:
            option.parse(example[env])  # a required one shows a value it takes
        else:
            assert example[env] == option.default, env


def test_the_allowed_text_of_a_bounded_setting_is_its_bounds() -> None:
    assert settings.RATE_LIMIT.allowed == "requests per second, a number from 0.01 to 1000000"
    assert settings.BATCH_SIZE.allowed == "an integer from 1 to 30000"
    assert settings.BATCH_TIMEOUT.allowed == "seconds, a number from 0.001 to 3600"
    with pytest.raises(TypeError, match="say what is allowed"):
        Option("SLUICEWAY_X", str, "no bounds and no words")


def spec_field(*path: str) -> dict[str, Any]:
    field: dict[str, Any] = crd.SPEC
    for name in path:
        field = field["properties"][name]
    return field


@pytest.mark.parametrize(
    ("path", "option"),
    [
        (("source", "rateLimit"), settings.RATE_LIMIT),
        (("fetcher", "concurrency"), settings.CONCURRENCY),
        (("fetcher", "maxAttempts"), settings.MAX_ATTEMPTS),
        (("fetcher", "requestTimeoutSeconds"), settings.REQUEST_TIMEOUT),
        (("writer", "batchSize"), settings.BATCH_SIZE),
        (("writer", "batchTimeoutSeconds"), settings.BATCH_TIMEOUT),
    ],
)
def test_the_crd_states_the_settings_bounds_and_defaults(
    path: tuple[str, ...], option: Option
) -> None:
    field, bounds = spec_field(*path), option.bounds
    assert bounds is not None
    assert option.default is not None
    assert (field["minimum"], field["maximum"]) == (bounds.low, bounds.high)
    assert field["default"] == bounds(option.default)
    assert field["type"] == ("integer" if bounds.integral else "number")


def test_the_charts_example_pipeline_is_held_to_the_crds_bounds() -> None:
    schema = json.loads((ROOT / "charts/sluiceway/values.schema.json").read_text())
    example = schema["properties"]["examplePipeline"]["properties"]
    pairs = [(example["rateLimit"], spec_field("source", "rateLimit"))] + [
        (example["writer"]["properties"][name], spec_field("writer", name))
        for name in example["writer"]["properties"]
    ]
    for values_field, crd_field in pairs:
        assert (values_field["minimum"], values_field["maximum"]) == (
            crd_field["minimum"], crd_field["maximum"])  # fmt: skip


def test_the_charts_pipeline_images_are_held_to_the_operators_settings() -> None:
    schema = json.loads((ROOT / "charts/sluiceway/values.schema.json").read_text())
    images = schema["properties"]["pipelineImages"]["properties"]
    # Empty, or what the operator's option takes (a value it would refuse exits it with 2).
    assert images["repository"]["pattern"] == f"^({REPOSITORY.pattern})?$"
    assert images["tag"]["pattern"] == f"^({TAG.pattern})?$"
    longest = "r" * images["repository"]["maxLength"]
    assert IMAGE_REPOSITORY.parse(longest) == longest
    with pytest.raises(ValueError):
        IMAGE_REPOSITORY.parse(longest + "r")


def test_the_charts_peering_lifetime_is_held_to_the_operators_setting() -> None:
    schema = json.loads((ROOT / "charts/sluiceway/values.schema.json").read_text())
    lifetime = schema["properties"]["operator"]["properties"]["peering"]["properties"][
        "lifetimeSeconds"]  # fmt: skip
    bounds = PEERING_LIFETIME.bounds
    assert bounds is not None
    assert (lifetime["minimum"], lifetime["maximum"]) == (bounds.low, bounds.high)
    assert lifetime["type"] == "integer"
    assert bounds.integral
