"""Every flow, deployment and trigger loads: the served set and prefect.yaml agree."""

from __future__ import annotations

import importlib

import yaml

from config.settings import parse_config
from flows.serve import build_deployments
from tests.conftest import ROOT


def test_prefect_yaml_entrypoints_import_and_match_the_served_triggers(tmp_path):
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        module, _, name = d["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
        assert flow.name in ("ingest", "cluster")
        for p in d.get("parameters", {}):
            assert p in flow.parameters.properties, (d["name"], p)
    settings = parse_config(
        "[[sources]]\nname = 'inbox'\nkind = 'files'\npath = 'x'\nwatch = true\n"
    )
    served = {d.name: d for d in build_deployments(settings, tmp_path / "c.toml")}
    yaml_triggers = {d["name"]: d.get("triggers", []) for d in spec["deployments"]}
    for name in ("ingest-inbox", "cluster-stories"):
        [t] = served[name].triggers
        [y] = yaml_triggers[name]
        assert set(t.expect) == set(y["expect"])
        assert t.match.model_dump() == y["match"]


def test_the_example_automations_are_valid_prefect_automations():
    from prefect.automations import AutomationCore

    spec = yaml.safe_load((ROOT / "examples/automations/notify.yaml").read_text())
    autos = [AutomationCore.model_validate(a) for a in spec["automations"]]
    failing, quiet = autos
    assert failing.trigger.expect == {"newsflow.source.failed"}
    assert failing.trigger.match.model_dump()["newsflow.consecutive_failures"] == "3"
    assert quiet.trigger.posture == "Proactive" and quiet.trigger.within.total_seconds() == 86400
