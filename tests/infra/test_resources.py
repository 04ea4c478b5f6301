"""Security properties of each resource the templates create."""

from __future__ import annotations

import re

import pytest

from bicep_templates import INFRA, MODULES, all_resources, expr, module_names, one, parse, resources, template


def test_every_template_parses():
    paths = [INFRA / "main.bicep", *sorted(MODULES.glob("*.bicep"))]
    assert len(paths) >= 9
    for path in paths:
        assert parse(path), path


def test_every_module_is_used(main):
    used = set()
    for name in ["main", *module_names()]:
        for mod in template(name).get("modules", {}).values():
            used.add(mod["detail"]["path"].removeprefix("modules/").removesuffix(".bicep"))
    assert used == set(module_names())


# Storage


def storage_accounts():
    for name, symbol, res in all_resources():
        if res["type"] == "Microsoft.Storage/storageAccounts" and not res["existing"]:
            yield name, res["body"]["properties"]


@pytest.mark.parametrize("name", ["lake", "hoststorage"])
def test_storage_account_is_entra_only_and_tls12(name):
    _, account = one(template(name), "Microsoft.Storage/storageAccounts")
    props = account["body"]["properties"]
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["allowBlobPublicAccess"] is False
    assert props["allowSharedKeyAccess"] is False
    assert props["defaultToOAuthAuthentication"] is True
    assert props["allowCrossTenantReplication"] is False
    assert props["isLocalUserEnabled"] is False
    assert props["networkAcls"]["bypass"] == "AzureServices"
    assert props["encryption"]["requireInfrastructureEncryption"] is True


def test_all_storage_accounts_are_covered():
    assert sorted(name for name, _ in storage_accounts()) == ["hoststorage", "lake"]


def test_lake_is_adls_gen2_with_soft_delete():
    lake = template("lake")
    _, account = one(lake, "Microsoft.Storage/storageAccounts")
    props = account["body"]["properties"]
    assert props["isHnsEnabled"] is True
    assert props["isSftpEnabled"] is False
    assert account["body"]["kind"] == "StorageV2"
    # Unity Catalog's access connector stays trusted if the firewall is switched to Deny.
    rules = props["networkAcls"]["resourceAccessRules"]
    assert [expr(r["resourceId"]) for r in rules] == ["accessConnectorId"]
    assert props["networkAcls"]["defaultAction"] == "networkDefaultAction"
    assert lake["parameters"]["networkDefaultAction"]["decorators"][-1]["argument"] == ["Allow", "Deny"]
    _, blob = one(lake, "Microsoft.Storage/storageAccounts/blobServices")
    assert blob["body"]["properties"]["deleteRetentionPolicy"]["enabled"] is True
    assert blob["body"]["properties"]["containerDeleteRetentionPolicy"]["enabled"] is True


@pytest.mark.parametrize("name", ["lake", "hoststorage"])
def test_containers_are_private(name):
    containers = resources(template(name), "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert containers
    for res in containers.values():
        assert res["body"]["properties"]["publicAccess"] == "None"


def test_host_storage_has_the_deployment_container():
    host = template("hoststorage")
    symbol, _ = one(host, "Microsoft.Storage/storageAccounts/blobServices/containers")
    url = expr(host["outputs"]["deploymentContainerUrl"]["value"])
    assert f"${{{symbol}.name}}" in url and "primaryEndpoints.blob" in url


# Event Hubs


def test_event_hubs_namespace_has_local_auth_disabled():
    _, ns = one(template("eventhubs"), "Microsoft.EventHub/namespaces")
    props = ns["body"]["properties"]
    assert props["disableLocalAuth"] is True
    assert props["minimumTlsVersion"] == "1.2"
    assert ns["body"]["sku"]["name"] == "namespaceSkuName"
    decorators = template("eventhubs")["parameters"]["namespaceSkuName"]["decorators"]
    allowed = [d["argument"] for d in decorators if d["type"] == "allowed"]
    assert allowed == [["Standard", "Premium"]]  # Basic has no consumer groups of its own


def test_hub_partition_count_is_a_parameter(main):
    eh = template("eventhubs")
    _, hub = one(eh, "Microsoft.EventHub/namespaces/eventhubs")
    assert hub["body"]["properties"]["partitionCount"] == "partitionCount"
    assert main["modules"]["eventHubs"]["config"]["params"]["partitionCount"] == "eventHubPartitionCount"
    assert main["parameters"]["eventHubPartitionCount"]["type"] == "int"
    _, group = one(eh, "Microsoft.EventHub/namespaces/eventhubs/consumergroups")
    assert group["body"]["name"] == "consumerGroupName"


def decorator_values(tpl, param):
    out = {}
    for d in tpl["parameters"][param].get("decorators", []):
        out[d["type"]] = d.get("argument")
    return out


@pytest.mark.parametrize("name,capacity,retention", [
    ("main", "eventHubsCapacity", "eventHubMessageRetentionInDays"),
    ("eventhubs", "namespaceCapacity", "messageRetentionInDays"),
])
def test_event_hubs_capacity_and_retention_are_bounded(name, capacity, retention):
    # Standard: 1-40 throughput units, events kept at most 7 days; Premium: 1, 2, 4, 8 or 16 processing
    # units, at most 90 days (Event Hubs quotas and limits; Event Hubs Premium overview).
    tpl = template(name)
    bounds = decorator_values(tpl, capacity)
    assert (bounds["min_value"], bounds["max_value"]) == (1, 40)
    bounds = decorator_values(tpl, retention)
    assert (bounds["min_value"], bounds["max_value"]) == (1, 90)


def test_event_hubs_tier_limits_stop_the_deployment():
    # A value outside the tier's lookup table makes ARM fail on a missing property; an if() evaluates only
    # the branch it takes, so the other tier is not looked up.
    eh = template("eventhubs")
    v = eh["variables"]
    assert v["premiumProcessingUnits"]["value"] == {f"'{n}'": n for n in (1, 2, 4, 8, 16)}
    assert v["standardRetentionInDays"]["value"] == {f"'{n}'": n for n in range(1, 8)}
    assert expr(v["capacity"]["value"]) == (
        "equals(namespaceSkuName, Premium) ? premiumProcessingUnits[string(namespaceCapacity)] : namespaceCapacity"
    )
    assert expr(v["retentionInDays"]["value"]) == (
        "equals(namespaceSkuName, Standard) ? standardRetentionInDays[string(messageRetentionInDays)] : "
        "messageRetentionInDays"
    )
    _, ns = one(eh, "Microsoft.EventHub/namespaces")
    assert ns["body"]["sku"]["capacity"] == "capacity"
    _, hub = one(eh, "Microsoft.EventHub/namespaces/eventhubs")
    assert hub["body"]["properties"]["messageRetentionInDays"] == "retentionInDays"


def check_event_hubs(sku: str, capacity: int, retention: int) -> bool:
    """What the template lets through, read off its decorators and lookup tables."""
    eh = template("eventhubs")
    if sku not in decorator_values(eh, "namespaceSkuName")["allowed"]:
        return False
    bounds = decorator_values(eh, "namespaceCapacity")
    if not bounds["min_value"] <= capacity <= bounds["max_value"]:
        return False
    bounds = decorator_values(eh, "messageRetentionInDays")
    if not bounds["min_value"] <= retention <= bounds["max_value"]:
        return False
    v = eh["variables"]
    if sku == "Premium" and f"'{capacity}'" not in v["premiumProcessingUnits"]["value"]:
        return False
    if sku == "Standard" and f"'{retention}'" not in v["standardRetentionInDays"]["value"]:
        return False
    return True


@pytest.mark.parametrize("sku,capacity,retention,accepted", [
    ("Standard", 1, 1, True),
    ("Standard", 40, 7, True),
    ("Standard", 41, 1, False),
    ("Standard", 1, 8, False),
    ("Standard", 1, 90, False),
    ("Premium", 1, 90, True),
    ("Premium", 16, 30, True),
    ("Premium", 3, 1, False),
    ("Premium", 20, 1, False),
    ("Premium", 4, 91, False),
    ("Basic", 1, 1, False),
])
def test_event_hubs_values_azure_rejects_are_refused(sku, capacity, retention, accepted):
    assert check_event_hubs(sku, capacity, retention) is accepted


def test_no_shared_access_authorization_rules():
    for name, symbol, res in all_resources():
        assert "authorizationrules" not in res["type"].lower(), (name, symbol)


# Key Vault


def test_key_vault_uses_rbac_soft_delete_and_purge_protection():
    _, vault = one(template("keyvault"), "Microsoft.KeyVault/vaults")
    props = vault["body"]["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    assert "accessPolicies" not in props
    assert props["enabledForTemplateDeployment"] is False


def test_secrets_are_written_from_secure_parameters_only():
    secret = template("secret")
    _, res = one(secret, "Microsoft.KeyVault/vaults/secrets")
    value = res["body"]["properties"]["value"]
    assert value in secret["parameters"]
    assert any(d["type"] == "secure" for d in secret["parameters"][value]["decorators"])
    assert res["body"]["properties"]["contentType"]
    kv = template("keyvault")
    for mod in kv["modules"].values():
        body = mod["config"].get("config", mod["config"])
        param = body["params"]["value"]
        assert any(d["type"] == "secure" for d in kv["parameters"][param]["decorators"]), param


def test_databricks_oauth_secrets_exist_only_when_both_values_are_given():
    kv = template("keyvault")
    assert expr(kv["variables"]["useDatabricksOAuth"]["value"]) == (
        "!(or(empty(databricksClientId), empty(databricksClientSecret)))"
    )
    for symbol in ("databricksClientIdSecret", "databricksClientSecretSecret"):
        assert kv["modules"][symbol]["config"]["condition"] == "useDatabricksOAuth"


# Monitoring and the access connector


def test_application_insights_takes_entra_id_telemetry_only():
    mon = template("monitoring")
    _, ai = one(mon, "Microsoft.Insights/components")
    assert ai["body"]["properties"]["DisableLocalAuth"] is True
    assert expr(ai["body"]["properties"]["WorkspaceResourceId"]) == "workspace.id"
    _, ws = one(mon, "Microsoft.OperationalInsights/workspaces")
    assert ws["body"]["properties"]["features"]["disableLocalAuth"] is True


def test_access_connector_has_a_system_assigned_identity():
    _, connector = one(template("accessconnector"), "Microsoft.Databricks/accessConnectors")
    assert connector["body"]["identity"]["type"] == "SystemAssigned"


# Function app


def test_plan_is_linux_flex_consumption():
    _, plan = one(template("functionapp"), "Microsoft.Web/serverfarms")
    assert plan["body"]["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["body"]["properties"]["reserved"] is True


def test_function_app_is_https_only_custom_handler_on_its_identity():
    app = template("functionapp")
    _, site = one(app, "Microsoft.Web/sites")
    body = site["body"]
    props = body["properties"]
    assert body["kind"] == "functionapp,linux"
    assert body["identity"]["type"] == "UserAssigned"
    assert list(body["identity"]["userAssignedIdentities"]) == ["'${identityId}'"]
    assert props["httpsOnly"] is True
    assert props["keyVaultReferenceIdentity"] == "identityId"
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    assert props["siteConfig"]["scmMinTlsVersion"] == "1.2"
    assert props["siteConfig"]["remoteDebuggingEnabled"] is False
    assert props["siteConfig"]["cors"] == {"allowedOrigins": "platformCorsOrigins", "supportCredentials": False}

    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "custom", "version": "1.0"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == "deploymentContainerUrl"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    scale = config["scaleAndConcurrency"]
    assert scale == {"maximumInstanceCount": "maximumInstanceCount", "instanceMemoryMB": "instanceMemoryMB"}
    assert app["parameters"]["instanceMemoryMB"]["decorators"][-1]["argument"] == [512, 2048, 4096]


# Site properties and site settings that Flex Consumption rejects or ignores, from Microsoft's table of Flex
# Consumption deprecations (functions-app-settings, "Flex Consumption plan deprecations"). ARM answers a
# site that sets one of the first group with "The following site configuration property
# (Site.SiteConfig.FtpsState) for Flex Consumption sites is invalid".
FLEX_DEPRECATED_SITE_PROPERTIES = {
    "alwaysOn",
    "containerSize",
    "ftpsState",
    "isReserved",
    "IsXenon",
    "javaVersion",
    "LinuxFxVersion",
    "netFrameworkVersion",
    "powerShellVersion",
    "functionAppScaleLimit",
    "preWarmedInstanceCount",
    "use32BitWorkerProcess",
    "vnetBackupRestoreEnabled",
    "vnetContentShareEnabled",
    "vnetImagePullEnabled",
    "vnetRouteAllEnabled",
    "windowsFxVersion",
    # Named in the same ARM error for Flex Consumption sites.
    "functionsRuntimeScaleMonitoringEnabled",
}

# Every site property and site setting the template sets, each checked against that table.
FLEX_SITE_PROPERTIES = {"serverFarmId", "httpsOnly", "clientCertEnabled", "publicNetworkAccess",
                        "keyVaultReferenceIdentity", "functionAppConfig", "siteConfig"}
FLEX_SITE_CONFIG = {"minTlsVersion", "scmMinTlsVersion", "http20Enabled", "remoteDebuggingEnabled", "cors",
                    "appSettings"}


def test_function_app_sets_no_property_flex_consumption_rejects():
    _, site = one(template("functionapp"), "Microsoft.Web/sites")
    props = site["body"]["properties"]
    assert set(props) == FLEX_SITE_PROPERTIES
    assert set(props["siteConfig"]) == FLEX_SITE_CONFIG
    deprecated = {name.lower() for name in FLEX_DEPRECATED_SITE_PROPERTIES}
    for key in (*props, *props["siteConfig"]):
        assert key.lower() not in deprecated, key


def test_ftps_check_is_skipped_with_the_flex_consumption_reason():
    text = (INFRA / "modules" / "functionapp.bicep").read_text()
    assert "ftpsState:" not in text
    assert re.search(r"//checkov:skip=CKV_AZURE_78:.*Flex Consumption.*ftpsState", text)


def test_basic_auth_publishing_is_off():
    # Core Tools publishes to a Flex Consumption app with an Entra ID token; Flex Consumption has no FTP
    # endpoint, so only the scm (deployment endpoint) policy exists to be set.
    site_symbol, _ = one(template("functionapp"), "Microsoft.Web/sites")
    policies = resources(template("functionapp"), "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {p["body"]["name"] for p in policies.values()} == {"scm"}
    for policy in policies.values():
        assert policy["body"]["parent"] == site_symbol
        assert policy["body"]["properties"] == {"allow": False}
