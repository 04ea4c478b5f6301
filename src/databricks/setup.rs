//! `segment-delta setup`: checks everything the catalog side needs and prints a checklist with the fix for each
//! failure. It changes nothing unless asked (`--apply`: create the warehouse and the schemas).

use reqwest::Method;
use serde_json::Value;

use crate::databricks::{Databricks, warehouse};

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub ok: bool,
    pub what: String,
    pub fix: Option<String>,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", if self.ok { "pass" } else { "FAIL" }, self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

fn pass(what: impl Into<String>) -> Check {
    Check { ok: true, what: what.into(), fix: None }
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { ok: false, what: what.into(), fix: Some(fix.into()) }
}

/// The privileges granted to `principal` in a permissions answer, upper-case with `_` for spaces.
fn privileges_of(permissions: &Value, principal: &str) -> Vec<String> {
    permissions["privilege_assignments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["principal"].as_str().is_some_and(|p| p.eq_ignore_ascii_case(principal)))
        .flat_map(|a| a["privileges"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(|s| s.to_ascii_uppercase().replace(' ', "_")))
        .collect()
}

pub async fn run(
    catalog: &Databricks,
    lake_uri: &str,
    schemas: &[&str],
    apply: bool,
    _principal: Option<&str>,
) -> Vec<Check> {
    let client = catalog.client();
    let name = &catalog.catalog;
    let mut out = Vec::new();
    // Reachability and credentials: any authenticated call answers both.
    let me = client.call(Method::GET, "/api/2.0/preview/scim/v2/Me", None).await;
    let principal = match &me {
        Ok(v) => {
            let p = v["applicationId"].as_str().or(v["userName"].as_str()).unwrap_or_default().to_string();
            out.push(pass(format!("{} reached; credentials ({}) accepted as {p}", client.host, client.auth_kind())));
            p
        }
        Err(e) if e.status() == Some(401) || e.status() == Some(403) => {
            out.push(fail(
                format!("credentials ({}) refused: {e}", client.auth_kind()),
                "add the identity to the workspace as a service principal with `Databricks SQL access`, or fix DATABRICKS_TOKEN / DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET",
            ));
            return out;
        }
        Err(e) => {
            out.push(fail(format!("{} not reachable: {e}", client.host), "check DATABRICKS_HOST (the workspace URL)"));
            return out;
        }
    };
    match client.call(Method::GET, &format!("/api/2.1/unity-catalog/catalogs/{name}"), None).await {
        Ok(_) => out.push(pass(format!("catalog {name} exists"))),
        Err(e) => out
            .push(fail(format!("catalog {name}: {e}"), format!("CREATE CATALOG `{name}`; or set DATABRICKS_CATALOG"))),
    }
    match client.call(Method::GET, &format!("/api/2.1/unity-catalog/permissions/catalog/{name}"), None).await {
        Ok(p) if privileges_of(&p, &principal).iter().any(|x| x == "ALL_PRIVILEGES") => {
            out.push(pass(format!("{principal} has ALL PRIVILEGES on catalog {name}")))
        }
        Ok(_) => out.push(fail(
            format!("{principal} lacks ALL PRIVILEGES on catalog {name}"),
            format!("GRANT ALL PRIVILEGES ON CATALOG `{name}` TO `{principal}`"),
        )),
        Err(e) => out.push(fail(
            format!("cannot read the grants of catalog {name}: {e}"),
            "grant MANAGE or ownership to read them",
        )),
    }
    match client.call(Method::GET, "/api/2.1/unity-catalog/external-locations", None).await {
        Ok(list) => {
            let location = list["external_locations"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["url"].as_str().is_some_and(|u| lake_uri.starts_with(u.trim_end_matches('/'))));
            match location {
                Some(l) => {
                    let lname = l["name"].as_str().unwrap_or_default().to_string();
                    out.push(pass(format!("the lake {lake_uri} is inside external location {lname}")));
                    let path = format!("/api/2.1/unity-catalog/permissions/external_location/{lname}");
                    let have = match client.call(Method::GET, &path, None).await {
                        Ok(p) => privileges_of(&p, &principal),
                        Err(_) => Vec::new(),
                    };
                    let all = have.iter().any(|x| x == "ALL_PRIVILEGES");
                    let missing: Vec<&str> = ["CREATE_EXTERNAL_TABLE", "READ_FILES", "WRITE_FILES"]
                        .into_iter()
                        .filter(|p| !all && !have.iter().any(|h| h == p))
                        .collect();
                    if missing.is_empty() {
                        out.push(pass(format!("{principal} may create external tables, read and write files there")));
                    } else {
                        let grants = missing.iter().map(|p| p.replace('_', " ")).collect::<Vec<_>>().join(", ");
                        out.push(fail(
                            format!("{principal} lacks {grants} on external location {lname}"),
                            format!("GRANT {grants} ON EXTERNAL LOCATION `{lname}` TO `{principal}`"),
                        ));
                    }
                }
                None => out.push(fail(
                    format!("no external location covers the lake {lake_uri}"),
                    "create a storage credential from the access connector and an external location whose URL is the lake container (see docs/deploy.md)",
                )),
            }
        }
        Err(e) => {
            out.push(fail(format!("cannot list external locations: {e}"), "grant the identity BROWSE on the metastore"))
        }
    }
    match warehouse::resolve(client, catalog_warehouse(catalog), apply).await {
        Ok((id, created)) => {
            out.push(pass(format!("SQL warehouse {id} {}", if created { "created" } else { "found" })));
        }
        Err(e) => out.push(fail(
            format!("SQL warehouse: {e}"),
            "set DATABRICKS_WAREHOUSE_ID, or run `segment-delta setup --apply` to create a 2X-Small serverless warehouse named segment-delta",
        )),
    }
    for schema in schemas {
        let path = format!("/api/2.1/unity-catalog/schemas/{name}.{schema}");
        match client.call(Method::GET, &path, None).await {
            Ok(_) => out.push(pass(format!("schema {name}.{schema} exists"))),
            Err(_) if apply => match catalog.run(&super::sql::create_schema(name, schema)).await {
                Ok(_) => out.push(pass(format!("schema {name}.{schema} created"))),
                Err(e) => out.push(fail(
                    format!("schema {name}.{schema} could not be created: {e}"),
                    "check the catalog grants above",
                )),
            },
            Err(_) => out.push(fail(
                format!("schema {name}.{schema} does not exist yet"),
                "it is created with the first table; or run `segment-delta setup --apply`",
            )),
        }
    }
    out
}

fn catalog_warehouse(catalog: &Databricks) -> Option<&str> {
    catalog.configured_warehouse()
}
