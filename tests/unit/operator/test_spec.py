"""What a Pipeline may leave out: its images, which the operator then gives from its own
release (its settings), an explicit one winning per component; with neither, the Pipeline
fails with what to set."""

from __future__ import annotations

from typing import Any, cast

import jsonschema
import pytest

from sluiceway_common import settings
from sluiceway_common.settings import ConfigError
from sluiceway_operator import crd, manifests, scaling
from sluiceway_operator.controller import Controller
from sluiceway_operator.kube import Kube
from sluiceway_operator.main import IMAGE_REPOSITORY, IMAGE_TAG, OPTIONS, pipeline_defaults
from sluiceway_operator.migration import Event
from sluiceway_operator.spec import Defaults, Image, InvalidSpec, parse

RELEASE = Defaults(Image("registry.example/release/sluiceway", "0.9.0"))
FEED = {"name": "seed", "schedule": "@daily", "stale": {"age": "7d"}}


def imageless(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"connectionsSecret": "conn",
                            "source": {"url": "https://api.example.com/items/{key}"}}  # fmt: skip
    spec.update(changes)
    return spec


def refs(spec: dict[str, Any], defaults: Defaults = RELEASE) -> tuple[str, str, str | None]:
    parsed = parse("users", "data", spec, defaults)
    admin = parsed.admin.image
    return parsed.fetcher.image.ref, parsed.writer.image.ref, admin.ref if admin else None


def test_the_crd_takes_a_pipeline_without_an_image_but_not_half_of_one() -> None:
    schema = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate({"spec": imageless()}, schema)
    with pytest.raises(jsonschema.ValidationError, match="'tag' is a required property"):
        jsonschema.validate({"spec": imageless(image={"repository": "r/s"})}, schema)


def test_a_pipeline_without_an_image_runs_the_operators() -> None:
    parsed = parse("users", "data", imageless(feeds=[FEED]), RELEASE)
    assert (parsed.fetcher.image.ref, parsed.writer.image.ref, parsed.admin.image) == (
        "registry.example/release/sluiceway-fetcher:0.9.0",
        "registry.example/release/sluiceway-writer:0.9.0",
        Image("registry.example/release/sluiceway-admin", "0.9.0"))  # fmt: skip
    assert (parsed.pull_policy, parsed.pull_secrets) == ("IfNotPresent", ())  # the schema's
    job = manifests.migration_job(parsed)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/release/sluiceway-writer:0.9.0")  # fmt: skip


def test_an_explicit_image_wins_per_component() -> None:
    own = {"repository": "registry.example/own/sluiceway", "tag": "2.0"}
    assert refs(imageless(image=own)) == (
        "registry.example/own/sluiceway-fetcher:2.0", "registry.example/own/sluiceway-writer:2.0",
        "registry.example/own/sluiceway-admin:2.0")  # fmt: skip
    patched = {"repository": "registry.example/patched-writer", "tag": "0.9.1"}
    assert refs(imageless(writer={"image": patched})) == (
        "registry.example/release/sluiceway-fetcher:0.9.0", "registry.example/patched-writer:0.9.1",
        "registry.example/release/sluiceway-admin:0.9.0")  # fmt: skip
    both = imageless(image={**own, "pullPolicy": "Always"}, admin={"image": patched})
    assert refs(both)[2] == "registry.example/patched-writer:0.9.1"
    assert parse("users", "data", both, RELEASE).pull_policy == "Always"


def test_without_an_image_or_the_operators_the_pipeline_says_what_to_set() -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse("users", "data", imageless())
    assert str(caught.value) == (
        "no image for the fetcher: set spec.image (repository and tag) or spec.fetcher.image, "
        "or give the operator default images (SLUICEWAY_OPERATOR_IMAGE_REPOSITORY and "
        "SLUICEWAY_OPERATOR_IMAGE_TAG, which the chart sets from pipelineImages)")  # fmt: skip
    own = {"repository": "registry.example/own", "tag": "1"}
    # Every component that runs named: enough. The admin image runs feeds alone.
    assert refs(imageless(fetcher={"image": own}, writer={"image": own}), Defaults()) == (
        "registry.example/own:1", "registry.example/own:1", None)  # fmt: skip
    with pytest.raises(InvalidSpec, match=r"^no image for the admin: .*spec\.admin\.image"):
        parse("users", "data", imageless(fetcher={"image": own}, writer={"image": own},
                                         feeds=[FEED]))  # fmt: skip


async def test_such_a_pipeline_fails_with_the_reason_and_creates_nothing() -> None:
    posted: list[Event] = []
    controller = Controller(kube=cast(Kube, None), post=posted.append, clock=lambda: 0.0)
    status = await controller.tick("users", "data", imageless(), {}, {}, adopt=lambda _: None)
    assert status["phase"] == "Failed"
    assert status["message"].startswith("no image for the fetcher: set spec.image")
    assert [(kind, reason) for kind, reason, _ in posted] == [("Warning", "InvalidSpec")]


def resolve(**environ: str) -> Defaults:
    return pipeline_defaults(settings.resolve(None, OPTIONS, environ))


def test_the_operators_images_come_from_its_settings_both_or_neither() -> None:
    assert resolve() == Defaults()
    assert resolve(SLUICEWAY_OPERATOR_IMAGE_REPOSITORY="registry.example:5000/data/sluiceway",
                   SLUICEWAY_OPERATOR_IMAGE_TAG="0.9.0") == Defaults(
        Image("registry.example:5000/data/sluiceway", "0.9.0"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"^SLUICEWAY_OPERATOR_IMAGE_TAG is empty but "
                       r"SLUICEWAY_OPERATOR_IMAGE_REPOSITORY is set: set both"):  # fmt: skip
        resolve(SLUICEWAY_OPERATOR_IMAGE_REPOSITORY="registry.example/sluiceway")


@pytest.mark.parametrize(("option", "value"), [
    (IMAGE_REPOSITORY, "registry.example/sluiceway:0.9.0"),  # a tag, where a prefix goes
    (IMAGE_REPOSITORY, "registry.example/sluiceway@sha256:00"),
    (IMAGE_REPOSITORY, "registry example/sluiceway"),
    (IMAGE_TAG, "-rc1"),
    (IMAGE_TAG, "0.9.0/x"),
])  # fmt: skip
def test_an_image_setting_that_is_no_image_name_is_refused(option: Any, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{option.env}="):
        settings.resolve(None, OPTIONS, {option.env: value})


def test_sleep_activation_and_step_policies_are_read_with_the_schemas_defaults() -> None:
    parsed = parse("users", "data", imageless(), RELEASE)
    assert parsed.idle_seconds == 300
    assert (parsed.fetcher.activation, parsed.writer.activation) == (0, 0)
    assert parsed.writer.scale_down == scaling.StepLimits((), "Max")
    given = parse("users", "data", imageless(idleSeconds=60, writer={
        "activationQueueDepth": 100, "scaleDownSelectPolicy": "Min", "scaleDownPolicies": [
            {"type": "Pods", "value": 2, "periodSeconds": 60},
            {"type": "Percent", "value": 25, "periodSeconds": 120}]},
        fetcher={"activationBacklog": 7}), RELEASE)  # fmt: skip
    assert given.idle_seconds == 60
    assert (given.fetcher.activation, given.writer.activation) == (7, 100)
    assert given.writer.scale_down == scaling.StepLimits(
        (scaling.StepPolicy("Pods", 2, 60), scaling.StepPolicy("Percent", 25, 120)), "Min"
    )


def test_a_percent_step_over_100_is_refused_by_the_schemas_rule_and_the_operator() -> None:
    spec = imageless(writer={"scaleDownPolicies": [
        {"type": "Percent", "value": 150, "periodSeconds": 60}]})  # fmt: skip
    item = crd.SPEC["properties"]["writer"]["properties"]["scaleDownPolicies"]["items"]
    (rule,) = item["x-kubernetes-validations"]  # CEL: the API server's to evaluate
    assert rule["rule"] == "self.type != 'Percent' || self.value <= 100"
    with pytest.raises(InvalidSpec, match=r"spec\.writer\.scaleDownPolicies\[0\]\.value=150"):
        parse("users", "data", spec, RELEASE)
    schema = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    with pytest.raises(jsonschema.ValidationError, match="'Later' is not one of"):
        jsonschema.validate({"spec": imageless(fetcher={"scaleDownSelectPolicy": "Later"})},
                            schema)  # fmt: skip
