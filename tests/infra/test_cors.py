"""Browser CORS and the public URL: one list of origins drives both the Functions host's CORS (siteConfig.cors)
and the handler's (SEGMENT_DELTA_CORS_ORIGINS).

On Flex Consumption the Functions host installs ASP.NET Core's CORS middleware in front of every function,
with a policy built from the site's CORS list even when that list is empty (azure-functions-host,
WebScriptHostBuilderExtension.cs and Configuration/CorsOptionsSetup.cs: IsAnyLinuxConsumption() covers
IsFlexConsumptionSku()). The middleware answers every preflight itself with 204 and does not call the function;
for a listed origin it adds Access-Control-Allow-Origin, -Methods and -Headers (echoing the request's), for any
other origin nothing (aspnetcore CorsMiddleware.cs and CorsService.ApplyResult). On other requests it sets
Access-Control-Allow-Origin for listed origins only, leaving the handler's headers alone for the rest. So the
handler never sees a preflight on Azure, and browsers that preflight (analytics.js sends an Authorization header
since @segment/analytics-next 1.84.0) need their origin in the host's list: the template gives both layers the
same list.
"""

from __future__ import annotations

import pytest

from bicep_templates import app_settings, bicepparam, expr, one, template


def site_config():
    _, site = one(template("functionapp"), "Microsoft.Web/sites")
    return site["body"]["properties"]["siteConfig"]


def variables():
    return {name: expr(v["value"]) for name, v in template("functionapp")["variables"].items()}


def decorators(tpl, param):
    return {d["type"]: d.get("argument") for d in tpl["parameters"][param].get("decorators", [])}


def test_host_and_handler_take_the_same_origins():
    v = variables()
    # The host's list: '*' alone when '*' is given, else the checked list.
    assert site_config()["cors"] == {"allowedOrigins": "platformCorsOrigins", "supportCredentials": False}
    assert v["corsAnyOrigin"] == "contains(corsOrigins, *)"
    assert v["platformCorsOrigins"] == "corsAnyOrigin ? [*] : corsOriginsChecked"
    # The handler's list: the same origins, comma-separated.
    assert expr(app_settings()["SEGMENT_DELTA_CORS_ORIGINS"]) == "corsAnyOrigin ? * : join(corsOriginsChecked, ,)"


def test_credentials_stay_off():
    # ASP.NET Core refuses a policy that allows any origin and credentials (CorsService.EvaluatePolicy throws),
    # and the Tracking API authenticates with the write key, not cookies.
    assert site_config()["cors"]["supportCredentials"] is False


def test_an_entry_that_is_not_an_origin_stops_the_deployment():
    v = variables()
    assert v["refusedCorsOrigins"].startswith("filter(corsOrigins, ")
    assert "and(not_equals(o, *), not_equals(length(split(o, /)), 3))" in v["refusedCorsOrigins"]
    assert v["corsOriginsWhenAccepted"] == "{ok: corsOrigins}"
    assert v["corsOriginsChecked"].startswith("corsOriginsWhenAccepted[empty(refusedCorsOrigins) ? ok : corsOrigins: ")


def origin_accepted(origin: str) -> bool:
    """What the template lets through, read off refusedCorsOrigins: '*' or exactly scheme://host[:port]."""
    return origin == "*" or len(origin.split("/")) == 3


@pytest.mark.parametrize("origin,accepted", [
    ("*", True),
    ("https://www.example.com", True),
    ("http://localhost:3000", True),
    ("https://shop.example.com:8443", True),
    # An Origin header never carries a path or a trailing slash, so the host would never match these.
    ("https://www.example.com/", False),
    ("https://www.example.com/shop", False),
    ("www.example.com", False),
])
def test_origins_the_template_refuses(origin, accepted):
    assert origin_accepted(origin) is accepted


def test_at_least_one_origin():
    # An empty list would not switch the host's CORS off, only make every preflight fail, while the handler
    # reads an empty SEGMENT_DELTA_CORS_ORIGINS as unset (any origin): the template takes no empty list.
    assert decorators(template("functionapp"), "corsOrigins")["min_length"] == 1
    assert decorators(template("main"), "corsOrigins")["min_length"] == 1


def test_origins_and_public_url_are_parameters_of_main(main):
    p = main["parameters"]
    assert "allowedOrigins" not in p
    assert p["corsOrigins"]["type"] == "array"
    assert p["corsOrigins"]["default"] == ["*"]
    assert p["publicUrl"]["type"] == "string"
    assert p["publicUrl"]["default"] == ""
    params = main["modules"]["functionApp"]["config"]["params"]
    assert params["corsOrigins"] == "corsOrigins"
    assert params["publicUrl"] == "publicUrl"
    _, values = bicepparam()
    assert values["corsOrigins"] == "['*']"
    assert values["publicUrl"] == "''"


def test_public_url_defaults_to_the_app_host_name():
    v = variables()
    assert app_settings()["SEGMENT_DELTA_PUBLIC_URL"] == "publicUrlValue"
    # The site's own defaultHostName cannot be read inside its own definition; <name>.azurewebsites.net is
    # what the app is reached at (the module's name parameter says so too).
    assert v["publicUrlValue"] == "empty(publicUrl) ? https://${name}.azurewebsites.net : publicUrl"
    assert "azurewebsites.net" in template("functionapp")["parameters"]["name"]["decorators"][0]["argument"]
