"""main.bicep as a whole: outputs, naming, and the parameter file it is deployed with."""

from __future__ import annotations

import re

from bicep_templates import INFRA, bicepparam, expr, is_secure

REQUIRED_OUTPUTS = {
    "functionAppName": "functionApp.outputs.name",
    "functionAppUrl": "https://${functionApp.outputs.defaultHostName}",
    "identityClientId": "identity.outputs.clientId",
    "identityPrincipalId": "identity.outputs.principalId",
    "lakeUri": "lakeUri",
    "accessConnectorId": "accessConnector.outputs.id",
    "eventHubsNamespaceFqdn": "eventHubs.outputs.fullyQualifiedNamespace",
    "eventHubName": "eventHubs.outputs.hubName",
    "keyVaultName": "keyVault.outputs.name",
}


def test_outputs(main):
    outputs = {name: expr(o["value"]) for name, o in main["outputs"].items()}
    for name, value in REQUIRED_OUTPUTS.items():
        assert outputs.get(name) == value, name


def test_names_are_unique_per_resource_group(main):
    # pycep names Bicep functions in snake_case: uniqueString -> unique_string.
    token = expr(main["variables"]["token"]["value"])
    assert token == "unique_string(subscription().id, resource_group().id, baseName)"
    names = main["variables"]["names"]["value"]
    # Storage accounts: 3-24 lowercase letters and digits; vaults: 3-24 with hyphens. The token is 13.
    for key, pattern in (("lake", r"[a-z0-9]+"), ("hostStorage", r"[a-z0-9]+"), ("keyVault", r"[a-z][a-z0-9-]+")):
        assert "${token}" in names[key]
        assert len(names[key].replace("${token}", "x" * 13)) <= 24, key
        assert re.fullmatch(pattern, names[key].replace("${token}", "x")), key


def test_bicepparam_targets_main_and_sets_only_known_parameters(main):
    using, params = bicepparam()
    assert using == "./main.bicep"
    assert set(params) <= set(main["parameters"])
    required = {p for p, d in main["parameters"].items() if d.get("default") is None}
    assert required <= set(params), required - set(params)


def test_bicepparam_reads_secrets_from_the_environment(main):
    _, params = bicepparam()
    for name, value in params.items():
        if name in main["parameters"] and is_secure(main, name):
            assert re.fullmatch(r"readEnvironmentVariable\('[A-Z_]+'(, '')?\)", value), name
    assert params["segmentDeltaSources"] == "readEnvironmentVariable('SEGMENT_DELTA_SOURCES')"
    assert params["databricksHost"] == "readEnvironmentVariable('DATABRICKS_HOST')"


def test_bicepparam_values_fit_the_template(main):
    _, params = bicepparam()
    for name, value in params.items():
        decorators = main["parameters"][name].get("decorators", [])
        allowed = [d["argument"] for d in decorators if d["type"] == "allowed"]
        if allowed and not value.startswith("readEnvironmentVariable"):
            literal = int(value) if value.isdigit() else value.strip("'")
            assert literal in allowed[0], name
        for d in decorators:
            if value.isdigit() and d["type"] == "min_value":
                assert int(value) >= d["argument"], name
            if value.isdigit() and d["type"] == "max_value":
                assert int(value) <= d["argument"], name


def test_skips_carry_a_reason():
    for path in INFRA.rglob("*.bicep"):
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                m = re.fullmatch(r"\s*//checkov:skip=(CKV2?_AZURE_\d+):(.+)", line)
                assert m, f"{path.name}: {line.strip()}"
                assert len(m.group(2).split()) >= 5, f"{path.name}: {m.group(1)} needs a written reason"
