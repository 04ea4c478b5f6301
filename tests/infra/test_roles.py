"""Role assignments: the right built-in role, on the narrowest scope, for the right principal."""

from __future__ import annotations

import pytest

from bicep_templates import INFRA, all_resources, expr, literal, resources, template

STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
EVENT_HUBS_DATA_RECEIVER = "a638d3c7-ab3a-418d-83e6-5f17a39d4fde"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"

# Built-in roles that grant control of resources or of access: none may appear.
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"
STORAGE_ACCOUNT_CONTRIBUTOR = "17d1049b-9a84-46fb-8f53-869881c3d3ab"
KEY_VAULT_ADMINISTRATOR = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
EVENT_HUBS_DATA_OWNER = "f526a384-b230-433a-b45c-95f59c4a2dec"
FORBIDDEN = {
    OWNER,
    CONTRIBUTOR,
    USER_ACCESS_ADMINISTRATOR,
    STORAGE_ACCOUNT_CONTRIBUTOR,
    KEY_VAULT_ADMINISTRATOR,
    EVENT_HUBS_DATA_OWNER,
}

# (module, role, type of the scope resource, principal parameter)
EXPECTED = [
    ("lake", STORAGE_BLOB_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts/blobServices/containers", "appPrincipalId"),
    ("lake", STORAGE_BLOB_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts/blobServices/containers", "accessConnectorPrincipalId"),
    ("hoststorage", STORAGE_BLOB_DATA_OWNER, "Microsoft.Storage/storageAccounts", "appPrincipalId"),
    ("hoststorage", STORAGE_QUEUE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts", "appPrincipalId"),
    ("hoststorage", STORAGE_TABLE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts", "appPrincipalId"),
    ("eventhubs", EVENT_HUBS_DATA_RECEIVER, "Microsoft.EventHub/namespaces/eventhubs", "appPrincipalId"),
    ("keyvault", KEY_VAULT_SECRETS_USER, "Microsoft.KeyVault/vaults", "appPrincipalId"),
    ("monitoring", MONITORING_METRICS_PUBLISHER, "Microsoft.Insights/components", "appPrincipalId"),
]


def assignments():
    """(module, symbol, role id, scope symbol, scope type, principal, body) of every role assignment."""
    out = []
    for name, symbol, res in all_resources():
        if res["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        tpl = template(name)
        body = res["body"]
        role_fn = body["properties"]["roleDefinitionId"]["function"]
        assert role_fn["type"] == "subscription_resource_id", (name, symbol)
        assert role_fn["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        role = literal(tpl, role_fn["parameters"]["resource_name_1"])
        scope = body.get("scope")
        scope_type = resources(tpl)[scope]["type"] if scope in resources(tpl) else None
        out.append((name, symbol, role, scope, scope_type, body["properties"]["principalId"], body))
    return out


def test_role_assignments_are_exactly_the_expected_ones():
    found = sorted((m, role, scope_type, principal) for m, _, role, _, scope_type, principal, _ in assignments())
    assert found == sorted(EXPECTED)


@pytest.mark.parametrize("module,role,scope_type,principal", EXPECTED)
def test_expected_role_is_granted(module, role, scope_type, principal):
    matches = [
        a for a in assignments() if a[0] == module and a[2] == role and a[4] == scope_type and a[5] == principal
    ]
    assert len(matches) == 1


def test_every_assignment_is_scoped_named_by_guid_and_for_a_service_principal():
    for module, symbol, role, scope, scope_type, principal, body in assignments():
        where = f"{module}.{symbol}"
        assert scope_type is not None, f"{where}: scope must be a resource of the module, not the resource group"
        assert body["properties"]["principalType"] == "ServicePrincipal", where
        name = body["name"]["function"]
        assert name["type"] == "guid", where
        args = [expr(v) for v in name["parameters"].values() if v is not None]
        tpl = template(module)
        role_var = body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        assert args == [f"{scope}.id", principal, role_var], where
        assert literal(tpl, role_var) == role, where


def test_no_owner_contributor_or_access_admin_roles():
    for _, _, role, *_ in assignments():
        assert role not in FORBIDDEN
    text = "\n".join(p.read_text() for p in INFRA.rglob("*.bicep")).lower()
    for role in FORBIDDEN:
        assert role not in text


def test_lake_roles_are_on_the_container_not_the_account():
    for module, _, role, scope, scope_type, *_ in assignments():
        if module == "lake":
            assert scope_type.endswith("/containers")


def test_principals_are_the_app_identity_and_the_access_connector(main):
    wired = {}
    for symbol, mod in main["modules"].items():
        for param, value in mod["config"]["params"].items():
            if param.endswith("PrincipalId"):
                wired[(symbol, param)] = expr(value)
    assert wired == {
        ("lake", "appPrincipalId"): "identity.outputs.principalId",
        ("lake", "accessConnectorPrincipalId"): "accessConnector.outputs.principalId",
        ("hostStorage", "appPrincipalId"): "identity.outputs.principalId",
        ("eventHubs", "appPrincipalId"): "identity.outputs.principalId",
        ("monitoring", "appPrincipalId"): "identity.outputs.principalId",
        ("keyVault", "appPrincipalId"): "identity.outputs.principalId",
    }
    identity = template("identity")
    assert expr(identity["outputs"]["principalId"]["value"]) == "identity.properties.principalId"
    assert expr(identity["outputs"]["clientId"]["value"]) == "identity.properties.clientId"
    connector = template("accessconnector")
    assert expr(connector["outputs"]["principalId"]["value"]) == "accessConnector.identity.principalId"
