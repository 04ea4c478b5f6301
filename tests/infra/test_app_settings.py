"""The function app's settings: everything the handler and the Functions host read, and no secret in
plain text."""

from __future__ import annotations

import re

from bicep_templates import INFRA, ROOT, app_settings, bicepparam, expr, identifiers, is_secure, template, walk

# Read by the Functions host or its extensions (identity-based connections, telemetry, the Event Hub
# trigger's %EVENTHUB_NAME% and %EVENTHUB_CONSUMER_GROUP% placeholders).
HOST_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "EventHubConnection__fullyQualifiedNamespace",
    "EventHubConnection__credential",
    "EventHubConnection__clientId",
    "EVENTHUB_NAME",
    "EVENTHUB_CONSUMER_GROUP",
}

# Read by the handler.
HANDLER_SETTINGS = {
    "AZURE_CLIENT_ID",
    "SEGMENT_DELTA_LAKE",
    "SEGMENT_DELTA_SOURCES",
    "SEGMENT_DELTA_EVENTHUB_SCHEMA",
    "SEGMENT_DELTA_MAINTENANCE_SCHEDULE",
    "DATABRICKS_HOST",
    "DATABRICKS_CATALOG",
    "SEGMENT_DELTA_CORS_ORIGINS",
    "SEGMENT_DELTA_PUBLIC_URL",
}

# Set only when a value is given.
OPTIONAL_SETTINGS = {
    "DATABRICKS_WAREHOUSE_ID",
    "DATABRICKS_CLIENT_ID",
    "DATABRICKS_CLIENT_SECRET",
    "SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES",
}

SECRET_SETTINGS = {"SEGMENT_DELTA_SOURCES", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET"}

# Not allowed on Flex Consumption (runtime and package come from functionAppConfig), or a key.
FORBIDDEN_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "AzureWebJobsStorage",
    "EventHubConnection",
    "APPINSIGHTS_INSTRUMENTATIONKEY",
    "DATABRICKS_TOKEN",
}

KEY_VAULT_REFERENCE = re.compile(r"@Microsoft\.KeyVault\(SecretUri=\$\{(\w+)\}\)")


def test_every_setting_is_present_and_nothing_else():
    assert set(app_settings()) == HOST_SETTINGS | HANDLER_SETTINGS | OPTIONAL_SETTINGS


def test_no_forbidden_setting():
    assert not set(app_settings()) & FORBIDDEN_SETTINGS


def test_identity_based_connections_use_the_user_assigned_identity():
    s = app_settings()
    assert s["AzureWebJobsStorage__accountName"] == "hostStorageAccountName"
    assert s["AzureWebJobsStorage__credential"] == "managedidentity"
    assert s["EventHubConnection__credential"] == "managedidentity"
    assert s["EventHubConnection__fullyQualifiedNamespace"] == "eventHubsNamespace"
    for name in ("AzureWebJobsStorage__clientId", "EventHubConnection__clientId", "AZURE_CLIENT_ID"):
        assert s[name] == "identityClientId", name
    assert s["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"


def test_secret_settings_are_key_vault_references():
    s = app_settings()
    app = template("functionapp")
    for name in SECRET_SETTINGS:
        m = KEY_VAULT_REFERENCE.fullmatch(s[name])
        assert m, f"{name} must be a Key Vault reference, is {s[name]!r}"
        assert m.group(1) in app["parameters"], name


def test_no_secret_passes_through_the_function_app_module(main):
    app = template("functionapp")
    assert not [p for p in app["parameters"] if is_secure(app, p)]
    # In main.bicep the secure parameters go to the Key Vault module and nowhere else.
    secure = {p for p in main["parameters"] if is_secure(main, p)}
    assert secure == {"segmentDeltaSources", "databricksClientId", "databricksClientSecret"}
    for symbol, mod in main["modules"].items():
        used = identifiers(mod["config"]["params"]) & secure
        if symbol == "keyVault":
            assert used == secure
        else:
            assert not used, symbol
    for section in ("variables", "outputs", "resources"):
        assert not identifiers(main.get(section, {})) & secure, section


def test_no_keys_anywhere():
    text = "\n".join(p.read_text() for p in INFRA.rglob("*.bicep*"))
    for needle in ("listKeys", "listConnectionStrings", "AccountKey=", "SharedAccessKey", "primaryKey",
                   "InstrumentationKey=", "listkeys", "publishingPassword"):
        assert needle not in text, needle


def test_optional_settings_are_left_out_when_empty():
    app = template("functionapp")
    v = app["variables"]
    assert expr(v["warehouseAppSettings"]["value"]).startswith("empty(databricksWarehouseId) ? [] : ")
    assert expr(v["databricksOAuthAppSettings"]["value"]).startswith("empty(databricksClientSecretSecretUri) ? [] : ")
    assert expr(v["optimizeAppSettings"]["value"]).startswith("equals(databricksOptimizeBytes, 0) ? [] : ")
    (site,) = [r for r in app["resources"].values() if r["type"] == "Microsoft.Web/sites"]
    assert expr(site["config"]["properties"]["siteConfig"]["appSettings"]) == (
        "concat(baseAppSettings, warehouseAppSettings, databricksOAuthAppSettings, optimizeAppSettings, "
        "extraAppSettingsChecked)"
    )

    def names(var):
        return {n["name"] for n in walk(v[var]["value"]) if isinstance(n, dict) and "name" in n}

    assert names("warehouseAppSettings") == {"DATABRICKS_WAREHOUSE_ID"}
    assert names("databricksOAuthAppSettings") == {"DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET"}
    assert names("optimizeAppSettings") == {"SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES"}
    assert app_settings()["SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES"] == {
        "function": {"type": "string", "parameters": {"value_to_convert": "databricksOptimizeBytes"}}
    }
    assert names("baseAppSettings") == HOST_SETTINGS | HANDLER_SETTINGS


def test_lake_uri_is_an_abfss_url_of_the_lake_container(main):
    assert app_settings()["SEGMENT_DELTA_LAKE"] == "lakeUri"
    assert main["modules"]["functionApp"]["config"]["params"]["lakeUri"] == "lakeUri"
    assert main["variables"]["lakeUri"]["value"] == (
        "abfss://${lakeContainerName}@${lake.outputs.accountName}.dfs.${environment().suffixes.storage}/${lakePrefix}"
    )
    lake = template("lake")
    assert expr(lake["outputs"]["containerName"]["value"]) == "container.name"
    assert main["modules"]["lake"]["config"]["params"]["containerName"] == "lakeContainerName"


def test_function_app_module_is_wired_to_the_other_modules(main):
    params = {k: expr(v) for k, v in main["modules"]["functionApp"]["config"]["params"].items()}
    assert params["identityId"] == "identity.outputs.id"
    assert params["identityClientId"] == "identity.outputs.clientId"
    assert params["hostStorageAccountName"] == "hostStorage.outputs.accountName"
    assert params["deploymentContainerUrl"] == "hostStorage.outputs.deploymentContainerUrl"
    assert params["sourcesSecretUri"] == "keyVault.outputs.sourcesSecretUri"
    assert params["databricksClientIdSecretUri"] == "keyVault.outputs.databricksClientIdSecretUri"
    assert params["databricksClientSecretSecretUri"] == "keyVault.outputs.databricksClientSecretSecretUri"
    assert params["eventHubsNamespace"] == "eventHubs.outputs.fullyQualifiedNamespace"
    assert params["eventHubName"] == "eventHubs.outputs.hubName"
    assert params["eventHubConsumerGroup"] == "eventHubs.outputs.consumerGroupName"
    assert params["appInsightsConnectionString"] == "monitoring.outputs.connectionString"


# Extra settings: every other setting of the handler, passed as one parameter of name/value pairs.

# Settings of the handler (README, Configuration) that the template neither sets nor lets through
# extraAppSettings, and why.
NOT_SETTABLE = {
    "FUNCTIONS_CUSTOMHANDLER_PORT": "set by the Functions host",
    "DATABRICKS_TOKEN": "a secret; the app authenticates with its identity or an OAuth client in Key Vault",
    "AZURE_CLIENT_SECRET": "a secret; the app runs as its managed identity",
    "AZURE_STORAGE_ACCOUNT_KEY": "a secret; shared keys are off",
    "AZURE_STORAGE_SAS_TOKEN": "a secret; shared keys are off",
}


def readme_handler_settings() -> set[str]:
    """The variables of README's Configuration table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def reserved_keys() -> list[str]:
    return template("functionapp")["variables"]["reservedAppSettingKeys"]["value"]


def test_extra_app_settings_are_checked_then_appended():
    app = template("functionapp")
    v = app["variables"]
    assert app["parameters"]["extraAppSettings"]["type"] == "array"
    refused = expr(v["refusedExtraAppSettings"]["value"])
    # pycep renders the lambda differently from one version to the next; the parts are the same.
    assert refused.startswith("filter(extraAppSettings, ")
    assert "contains(reservedAppSettingKeys, to_upper(s.name))" in refused
    assert v["extraAppSettingsWhenAccepted"]["value"] == {"ok": "extraAppSettings"}
    checked = v["extraAppSettingsChecked"]["value"]["operator"]
    assert checked["type"] == "index_accessor"
    assert checked["operands"]["operand_1"] == "extraAppSettingsWhenAccepted"
    key = expr(checked["operands"]["operand_2"])
    assert key.startswith("empty(refusedExtraAppSettings) ? ok : extraAppSettings may not set ")


def test_extra_app_settings_cannot_replace_template_settings_or_hold_secrets():
    reserved = reserved_keys()
    assert all(key == key.upper() for key in reserved)
    must_refuse = (
        set(app_settings())
        | (set(NOT_SETTABLE) - {"FUNCTIONS_CUSTOMHANDLER_PORT"})
        | {"AzureWebJobsStorage", "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE"}
        # The Functions host reads its CORS policy from these; the template sets it through siteConfig.cors.
        | {"CORS_ALLOWED_ORIGINS", "CORS_SUPPORT_CREDENTIALS"}
    )
    assert {name.upper() for name in must_refuse} <= set(reserved)


def test_every_handler_setting_can_be_set_by_a_template_parameter():
    documented = readme_handler_settings()
    assert {"SEGMENT_DELTA_FLUSH_INTERVAL_MS", "RUST_LOG", "SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES"} <= documented
    assert set(NOT_SETTABLE) <= documented
    reserved = set(reserved_keys())
    named = set(app_settings())
    for name in sorted(documented - set(NOT_SETTABLE)):
        # Either the template sets it from a parameter of its own, or extraAppSettings may carry it.
        assert name in named or name.upper() not in reserved, name


def test_extra_settings_and_optimize_bytes_are_parameters_of_main(main):
    p = main["parameters"]
    assert p["extraAppSettings"]["type"] == "array"
    assert p["extraAppSettings"]["default"] == []
    assert p["databricksOptimizeBytes"]["type"] == "int"
    assert p["databricksOptimizeBytes"]["default"] == 0
    assert {"type": "min_value", "argument": 0} in p["databricksOptimizeBytes"]["decorators"]
    params = main["modules"]["functionApp"]["config"]["params"]
    assert params["extraAppSettings"] == "extraAppSettings"
    assert params["databricksOptimizeBytes"] == "databricksOptimizeBytes"
    _, values = bicepparam()
    assert values["extraAppSettings"] == "[]"
    assert values["databricksOptimizeBytes"] == "0"


def test_defaults(main):
    p = main["parameters"]
    assert p["maintenanceSchedule"]["default"] == "0 */15 * * * *"
    assert p["databricksWarehouseId"]["default"] == ""
    assert p["databricksClientId"]["default"] == ""
    assert p["databricksClientSecret"]["default"] == ""
    assert p["segmentDeltaSources"]["default"] is None
    assert p["databricksHost"]["default"] is None
