//! Unity Catalog kept in step through Databricks SQL, against the Databricks emulator: which statements run,
//! the catalog's columns against the Delta log, auth modes, and injected failures.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Harness;
use segment_delta::app::AppState;
use segment_delta::config::Secret;
use segment_delta::config::databricks::Auth;
use segment_delta::config::databricks::DatabricksConfig;
use serde_json::{Value, json};

const PAT: &str = "dapi-emulated-token";

struct Emulator {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    fn start(extra: &[&str]) -> Emulator {
        let mut child = Command::new(common::emulator_bin())
            .args(["--port", "0", "--token", PAT, "--catalog", "main", "--warehouse-start-ms", "100"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("emulator starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("listening on ").expect("address line").to_string();
        Emulator { child, url, http: reqwest::Client::new() }
    }

    fn config(&self, auth: Auth) -> DatabricksConfig {
        DatabricksConfig {
            host: self.url.clone(),
            auth,
            catalog: "main".into(),
            warehouse_id: None,
            statement_timeout: Duration::from_secs(30),
            retry_budget: Duration::from_secs(20),
        }
    }

    async fn statements(&self) -> Vec<Value> {
        let v: Value =
            self.http.get(format!("{}/_emulator/statements", self.url)).send().await.unwrap().json().await.unwrap();
        v["statements"].as_array().cloned().unwrap_or_default()
    }

    async fn texts(&self) -> Vec<String> {
        self.statements().await.iter().map(|s| s["statement"].as_str().unwrap().to_string()).collect()
    }

    async fn fault(&self, body: Value) {
        let res = self.http.post(format!("{}/_emulator/faults", self.url)).json(&body).send().await.unwrap();
        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    }

    async fn clear_faults(&self) {
        let res = self.http.delete(format!("{}/_emulator/faults", self.url)).send().await.unwrap();
        assert!(res.status().is_success());
    }

    /// The column names Unity Catalog lists for a table.
    async fn uc_columns(&self, full: &str) -> Vec<String> {
        let v: Value = self
            .http
            .get(format!("{}/api/2.1/unity-catalog/tables/{full}", self.url))
            .bearer_auth(PAT)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["columns"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn track(state: &AppState, id: &str, properties: Value) -> (u16, Value) {
    let body = json!({"userId": "u", "messageId": id, "event": "Signed Up", "properties": properties}).to_string();
    let res = warp::test::request()
        .method("POST")
        .path("/v1/track")
        .body(body)
        .reply(&segment_delta::sources::http::routes(state.clone()))
        .await;
    (res.status().as_u16(), serde_json::from_slice(res.body()).unwrap_or(Value::Null))
}

/// The sorted ids of `segment.signed_up`.
fn signed_up_ids(h: &Harness) -> Vec<String> {
    let mut ids: Vec<String> =
        h.table("segment", "signed_up").iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

fn delta_names(h: &Harness, table: &str) -> Vec<String> {
    common::delta_columns(&h.dir.path().join("segment").join(table)).into_iter().map(|(n, _)| n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_registered_and_widened_with_as_few_statements_as_possible() {
    let emu = Emulator::start(&[]);
    let h = Harness::new(|c| c.databricks = Some(emu.config(Auth::Pat(Secret::new(PAT)))));

    assert_eq!(track(&h.state, "m1", json!({"plan": "pro"})).await.0, 200);
    let first = emu.texts().await;
    assert!(first.iter().all(|s| !s.starts_with("ALTER")), "{first:?}");
    assert!(first.contains(&"CREATE SCHEMA IF NOT EXISTS `main`.`segment`".to_string()), "{first:?}");
    for table in ["tracks", "signed_up"] {
        let location = h.dir.path().join("segment").join(table).display().to_string();
        let create = format!("CREATE TABLE IF NOT EXISTS `main`.`segment`.`{table}` USING DELTA LOCATION '{location}'");
        assert_eq!(first.iter().filter(|s| **s == create).count(), 1, "{first:?}");
        assert_eq!(emu.uc_columns(&format!("main.segment.{table}")).await, delta_names(&h, table));
    }
    assert!(emu.statements().await.iter().all(|s| s["state"] == "SUCCEEDED"));

    // A new property: exactly one ALTER TABLE, on the table that gets it.
    assert_eq!(track(&h.state, "m2", json!({"plan": "team", "seats": 5, "2FA Enabled": true})).await.0, 200);
    let all = emu.texts().await;
    assert_eq!(
        all[first.len()..].to_vec(),
        vec![
            "ALTER TABLE `main`.`segment`.`signed_up` ADD COLUMNS (`seats` BIGINT, `2fa_enabled` BOOLEAN)".to_string()
        ]
    );
    assert_eq!(emu.uc_columns("main.segment.signed_up").await, delta_names(&h, "signed_up"));
    let rows = h.table("segment", "signed_up");
    let m2 = rows.iter().find(|r| r["id"] == "m2").unwrap();
    assert_eq!((m2["seats"].clone(), m2["2fa_enabled"].clone()), (json!(5), json!(true)));

    // Nothing new: no statement at all.
    assert_eq!(track(&h.state, "m3", json!({"plan": "free", "seats": 1})).await.0, 200);
    assert_eq!(emu.texts().await.len(), all.len());
    assert_eq!(h.table("segment", "signed_up").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_adding_the_same_column_both_succeed() {
    let emu = Emulator::start(&[]);
    let h = Harness::new(|c| c.databricks = Some(emu.config(Auth::Pat(Secret::new(PAT)))));
    assert_eq!(track(&h.state, "base", json!({"plan": "pro"})).await.0, 200);
    let other = h.sibling(|c| c.databricks = Some(emu.config(Auth::Pat(Secret::new(PAT)))));
    let (a, b) =
        tokio::join!(track(&h.state, "a", json!({"color": "red"})), track(&other, "b", json!({"color": "blue"})));
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    let names = delta_names(&h, "signed_up");
    assert_eq!(names.iter().filter(|n| *n == "color").count(), 1);
    assert_eq!(emu.uc_columns("main.segment.signed_up").await, names);
    assert_eq!(signed_up_ids(&h), vec!["a", "b", "base"]);
    let alters: Vec<Value> =
        emu.statements().await.into_iter().filter(|s| s["statement"].as_str().unwrap().starts_with("ALTER")).collect();
    assert!(alters.iter().filter(|s| s["state"] == "SUCCEEDED").count() == 1, "{alters:?}");
    assert!(
        alters.iter().all(|s| s["state"] == "SUCCEEDED" || s["error_class"] == "FIELDS_ALREADY_EXISTS"),
        "{alters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_are_renewed_before_they_expire() {
    let emu = Emulator::start(&["--client-id", "sp-id", "--client-secret", "sp-secret", "--token-ttl-secs", "2"]);
    let auth = Auth::OAuthM2m { client_id: "sp-id".into(), client_secret: Secret::new("sp-secret") };
    let h = Harness::new(|c| c.databricks = Some(emu.config(auth)));
    assert_eq!(track(&h.state, "o1", json!({"plan": "pro"})).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(track(&h.state, "o2", json!({"after_expiry": 1})).await, (200, json!({"success": true})));
    assert!(delta_names(&h, "signed_up").contains(&"after_expiry".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_managed_identity_tokens_come_from_the_identity_endpoint() {
    let emu = Emulator::start(&["--identity-header", "host-secret", "--token-ttl-secs", "2"]);
    let auth = Auth::AzureMsi {
        endpoint: Some(format!("{}/msi/token", emu.url)),
        header: Some(Secret::new("host-secret")),
        client_id: Some("11111111-2222-3333-4444-555555555555".into()),
    };
    let h = Harness::new(|c| c.databricks = Some(emu.config(auth)));
    assert_eq!(track(&h.state, "e1", json!({"plan": "pro"})).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(track(&h.state, "e2", json!({"later": true})).await.0, 200);
    assert_eq!(emu.uc_columns("main.segment.signed_up").await, delta_names(&h, "signed_up"));
    // A wrong identity header is refused, and the sender is told to retry rather than the data being lost.
    let bad = Auth::AzureMsi {
        endpoint: Some(format!("{}/msi/token", emu.url)),
        header: Some(Secret::new("wrong")),
        client_id: None,
    };
    let h2 = Harness::new(|c| {
        let mut cfg = emu.config(bad);
        cfg.retry_budget = Duration::from_secs(1);
        c.databricks = Some(cfg);
    });
    let (status, body) = track(&h2.state, "e3", json!({"plan": "pro"})).await;
    assert_eq!(status, 200, "a new table is committed first and registered on a later write: {body}");
    let (status, body) = track(&h2.state, "e4", json!({"new_col": 1})).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("could not obtain a Databricks token"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_outages_lose_and_double_nothing() {
    let emu = Emulator::start(&[]);
    let h = Harness::new(|c| {
        let mut cfg = emu.config(Auth::Pat(Secret::new(PAT)));
        cfg.retry_budget = Duration::from_secs(4);
        c.databricks = Some(cfg);
    });
    assert_eq!(track(&h.state, "t1", json!({"plan": "pro"})).await.0, 200);
    // Throttled twice: retried after Retry-After, the request succeeds.
    emu.fault(json!({"status": 429, "count": 2, "path_prefix": "/api/2.0/sql/statements", "retry_after_secs": 1}))
        .await;
    let (status, body) = track(&h.state, "t2", json!({"a": 1})).await;
    assert_eq!(status, 200, "{body} {:?}", emu.statements().await);
    // Unavailable for longer than the retry budget: the sender gets a 5xx and nothing of it is written.
    emu.fault(json!({"status": 503, "count": 1000, "path_prefix": "/api/"})).await;
    let (status, body) = track(&h.state, "t3", json!({"b": 1})).await;
    assert_eq!(status, 503, "{body}");
    emu.clear_faults().await;
    // The client's retry lands it, once.
    assert_eq!(track(&h.state, "t3", json!({"b": 1})).await.0, 200);
    assert_eq!(signed_up_ids(&h), vec!["t1", "t2", "t3"]);
    assert_eq!(h.table("segment", "tracks").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_with_features_this_writer_cannot_write_are_refused() {
    let emu = Emulator::start(&[]);
    let h = Harness::new(|c| c.databricks = Some(emu.config(Auth::Pat(Secret::new(PAT)))));
    assert_eq!(track(&h.state, "f1", json!({"plan": "pro"})).await.0, 200);
    // Databricks upgrades the table: a commit adding a writer feature this writer does not know to the protocol.
    let log = h.dir.path().join("segment/signed_up/_delta_log");
    let protocol = json!({"protocol": {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": [],
        "writerFeatures": ["domainMetadata", "someFutureFeature"]}});
    let commit = json!({"commitInfo": {"timestamp": 1, "operation": "SET TBLPROPERTIES"}});
    std::fs::write(log.join("00000000000000000001.json"), format!("{commit}\n{protocol}\n")).unwrap();
    let other = h.sibling(|c| c.databricks = Some(emu.config(Auth::Pat(Secret::new(PAT)))));
    let (status, body) = track(&other, "f2", json!({"plan": "team"})).await;
    assert_eq!(status, 500, "{body}");
    assert!(body["error"].as_str().unwrap().contains("someFutureFeature"), "{body}");
    assert_eq!(h.table("segment", "signed_up").len(), 1, "nothing was written to the upgraded table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_prints_a_checklist_with_fixes() {
    let lake = "abfss://lake@acct.dfs.core.windows.net/bronze";
    let ready = Emulator::start(&[
        "--principal",
        "sp-app-id",
        "--external-location",
        "bronze=abfss://lake@acct.dfs.core.windows.net/",
        "--grant",
        "principal=sp-app-id:securable=catalog/main:privileges=ALL_PRIVILEGES",
        "--grant",
        "principal=sp-app-id:securable=external_location/bronze:privileges=CREATE_EXTERNAL_TABLE,READ_FILES,WRITE_FILES",
    ]);
    let catalog = segment_delta::databricks::Databricks::new(&ready.config(Auth::Pat(Secret::new(PAT)))).unwrap();
    let checks = segment_delta::databricks::setup::run(&catalog, lake, &["web"], false, None).await;
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(|c| c.to_string()).collect();
    // Without --apply nothing is created: the warehouse and the schema are reported, with their fix.
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.iter().any(|f| f.contains("SQL warehouse") && f.contains("setup --apply")), "{failed:?}");
    assert!(failed.iter().any(|f| f.contains("schema main.web")), "{failed:?}");
    assert!(ready.texts().await.is_empty(), "a check changes nothing");
    let checks = segment_delta::databricks::setup::run(&catalog, lake, &["web"], true, None).await;
    assert!(checks.iter().all(|c| c.ok), "{:?}", checks.iter().map(ToString::to_string).collect::<Vec<_>>());
    assert_eq!(ready.texts().await, vec!["CREATE SCHEMA IF NOT EXISTS `main`.`web`".to_string()]);

    // A workspace with no grants and no external location: each failure names its fix.
    let bare = Emulator::start(&["--principal", "sp-app-id"]);
    let catalog = segment_delta::databricks::Databricks::new(&bare.config(Auth::Pat(Secret::new(PAT)))).unwrap();
    let lines: Vec<String> = segment_delta::databricks::setup::run(&catalog, lake, &[], false, None)
        .await
        .iter()
        .filter(|c| !c.ok)
        .map(ToString::to_string)
        .collect();
    let grant =
        "GRANT USE CATALOG, USE SCHEMA, CREATE SCHEMA, CREATE TABLE, MODIFY, SELECT ON CATALOG `main` TO `sp-app-id`";
    assert!(lines.iter().any(|l| l.contains(grant)), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("no external location covers the lake")), "{lines:?}");
    // Wrong credentials stop the checklist at the first line.
    let catalog = segment_delta::databricks::Databricks::new(&bare.config(Auth::Pat(Secret::new("wrong")))).unwrap();
    let checks = segment_delta::databricks::setup::run(&catalog, lake, &[], false, None).await;
    assert_eq!(checks.len(), 1);
    assert!(checks[0].to_string().contains("credentials (personal access token) refused"), "{}", checks[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_service_principal_tokens_come_from_the_authority() {
    let emu = Emulator::start(&[
        "--entra-tenant-id",
        "tenant-1",
        "--entra-client-id",
        "app-1",
        "--entra-client-secret",
        "s3cret",
    ]);
    let auth = Auth::AzureClientSecret {
        tenant_id: "tenant-1".into(),
        client_id: "app-1".into(),
        client_secret: Secret::new("s3cret"),
        authority: emu.url.clone(),
    };
    let h = Harness::new(|c| c.databricks = Some(emu.config(auth)));
    assert_eq!(track(&h.state, "sp1", json!({"plan": "pro"})).await.0, 200);
    assert_eq!(track(&h.state, "sp2", json!({"via_sp": true})).await.0, 200);
    assert_eq!(emu.uc_columns("main.segment.signed_up").await, delta_names(&h, "signed_up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_its_deadline_is_cancelled_and_retried() {
    let emu = Emulator::start(&[]);
    let h = Harness::new(|c| {
        let mut cfg = emu.config(Auth::Pat(Secret::new(PAT)));
        cfg.statement_timeout = Duration::from_secs(1);
        c.databricks = Some(cfg);
    });
    assert_eq!(track(&h.state, "s1", json!({"plan": "pro"})).await.0, 200);
    emu.fault(json!({"slow_statements_ms": 2500})).await;
    // Every ALTER outlives its deadline and is cancelled: once the write's retry budget is spent the sender gets
    // a 5xx, and nothing of the request is written.
    let (status, body) = track(&h.state, "s2", json!({"slow": 1})).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("was cancelled"), "{body}");
    let states: Vec<String> = emu.statements().await.iter().map(|s| s["state"].as_str().unwrap().to_string()).collect();
    assert!(states.iter().any(|s| s == "CANCELED"), "{states:?}");
    assert_eq!(h.table("segment", "signed_up").len(), 1);
    // The warehouse is fast again: the sender's retry lands, once.
    emu.clear_faults().await;
    assert_eq!(track(&h.state, "s2", json!({"slow": 1})).await.0, 200);
    assert_eq!(emu.uc_columns("main.segment.signed_up").await, delta_names(&h, "signed_up"));
    assert_eq!(signed_up_ids(&h), vec!["s1", "s2"]);
}

/// The checklist's lines as printed.
fn lines(checks: &[segment_delta::databricks::setup::Check]) -> Vec<String> {
    checks.iter().map(ToString::to_string).collect()
}

fn line_with<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines.iter().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in {lines:#?}"))
}

const FUNCTION_SP: &str = "0b6f1b8e-4f1c-4d7e-9a51-3c2f7d9e8a10";
const LAKE: &str = "abfss://lake@acct.dfs.core.windows.net/bronze";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_checks_the_functions_identity_through_its_groups_and_ownership() {
    let emu = Emulator::start(&[
        // The deployer's token: an admin with every privilege, whose grants say nothing about the function's.
        "--principal",
        "deployer@example.com",
        "--service-principal",
        &format!("application_id={FUNCTION_SP}:display_name=segment-delta-func"),
        "--group",
        &format!("display_name=loaders:members={FUNCTION_SP}:entitlements=databricks-sql-access"),
        "--group",
        "display_name=users:entitlements=workspace-access",
        "--external-location",
        "bronze=abfss://lake@acct.dfs.core.windows.net/",
        "--warehouse",
        "wh:ddl:RUNNING",
        "--grant",
        "principal=loaders:securable=catalog/main:privileges=USE_CATALOG,USE_SCHEMA,CREATE_SCHEMA,CREATE_TABLE,MODIFY,SELECT",
        "--grant",
        "principal=deployer@example.com:securable=catalog/main:privileges=ALL_PRIVILEGES",
        "--owner",
        &format!("securable=external_location/bronze:principal={FUNCTION_SP}"),
        "--warehouse-permission",
        "warehouse=wh:group_name=loaders:level=CAN_USE",
    ]);
    let mut cfg = emu.config(Auth::Pat(Secret::new(PAT)));
    cfg.warehouse_id = Some("wh".into());
    let catalog = segment_delta::databricks::Databricks::new(&cfg).unwrap();
    let checks = segment_delta::databricks::setup::run(&catalog, LAKE, &[], false, Some(FUNCTION_SP)).await;
    let out = lines(&checks);
    assert!(checks.iter().all(|c| c.ok), "{out:#?}");
    assert!(line_with(&out, "checking the grants of").contains(&format!("{FUNCTION_SP}: given with --principal")));
    // (a) privileges inherited through an account group, with where they come from.
    let privileges = line_with(&out, "on catalog main");
    assert!(
        privileges.contains("USE CATALOG, USE SCHEMA, CREATE SCHEMA, CREATE TABLE, MODIFY, SELECT on catalog main: ")
    );
    assert!(privileges.ends_with("through group loaders"), "{privileges}");
    // (b) the owner of the external location holds every privilege on it.
    assert!(
        line_with(&out, "external location bronze:").contains(&format!("{FUNCTION_SP} owns external location bronze"))
    );
    // Entitlements and the warehouse, through the same group.
    assert!(line_with(&out, "databricks-sql-access").ends_with("entitlement through group loaders"));
    assert!(line_with(&out, "allow-cluster-create").contains("may not create clusters"));
    assert!(line_with(&out, "may use SQL warehouse").ends_with("wh: CAN_USE through group loaders"));

    // Without --principal the token's owner is checked, and the line says so.
    let checks = segment_delta::databricks::setup::run(&catalog, LAKE, &[], false, None).await;
    let out = lines(&checks);
    assert!(line_with(&out, "checking the grants of deployer@example.com").contains("the owner of DATABRICKS_TOKEN"));
    assert!(line_with(&out, "on catalog main").contains("ALL PRIVILEGES granted directly"), "{out:#?}");
    assert!(
        line_with(&out, "may use SQL warehouse")
            .contains("CAN_MANAGE through group admins (inherited from /sql/warehouses/)")
    );
    let location = line_with(&out, "on external location bronze");
    assert!(location.contains("GRANT CREATE EXTERNAL TABLE, READ FILES, WRITE FILES ON EXTERNAL LOCATION `bronze` TO `deployer@example.com`"), "{location}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_names_each_missing_grant_entitlement_and_warehouse_permission_with_its_fix() {
    let emu = Emulator::start(&[
        "--principal",
        "deployer@example.com",
        "--service-principal",
        &format!("application_id={FUNCTION_SP}"),
        "--group",
        &format!("display_name=readers:members={FUNCTION_SP}"),
        "--group",
        "display_name=users:entitlements=workspace-access",
        "--external-location",
        "bronze=abfss://lake@acct.dfs.core.windows.net/",
        "--warehouse",
        "wh:ddl:RUNNING",
        "--grant",
        &format!(
            "principal={FUNCTION_SP}:securable=catalog/main:privileges=USE_CATALOG,USE_SCHEMA,CREATE_TABLE,SELECT"
        ),
        "--grant",
        "principal=readers:securable=external_location/bronze:privileges=READ_FILES",
        "--warehouse-permission",
        &format!("warehouse=wh:service_principal_name={FUNCTION_SP}:level=CAN_VIEW"),
    ]);
    let mut cfg = emu.config(Auth::Pat(Secret::new(PAT)));
    cfg.warehouse_id = Some("wh".into());
    let catalog = segment_delta::databricks::Databricks::new(&cfg).unwrap();
    let checks = segment_delta::databricks::setup::run(&catalog, LAKE, &[], false, Some(FUNCTION_SP)).await;
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(ToString::to_string).collect();
    assert_eq!(failed.len(), 4, "{failed:#?}");
    // (c) a missing privilege: FAIL with the GRANT that adds exactly what is missing.
    let catalog_line = line_with(&failed, "on catalog main");
    assert!(catalog_line.contains(&format!("{FUNCTION_SP} lacks CREATE SCHEMA, MODIFY on catalog main")));
    assert!(catalog_line.contains("(it has USE CATALOG, USE SCHEMA, CREATE TABLE, SELECT granted directly)"));
    assert!(catalog_line.ends_with(&format!("fix: GRANT CREATE SCHEMA, MODIFY ON CATALOG `main` TO `{FUNCTION_SP}`")));
    let location = line_with(&failed, "on external location bronze");
    assert!(location.contains("lacks CREATE EXTERNAL TABLE, WRITE FILES on external location bronze (it has READ FILES through group readers)"), "{location}");
    // (d) no databricks-sql-access, neither its own nor its groups'.
    let entitlement = line_with(&failed, "databricks-sql-access");
    assert!(entitlement.contains("lacks the databricks-sql-access entitlement (nor do its groups"), "{entitlement}");
    assert!(entitlement.contains("fix: databricks service-principals patch "), "{entitlement}");
    // (e) CAN_VIEW does not let it run statements: FAIL with the CLI call that grants CAN_USE.
    let warehouse = line_with(&failed, "may not use SQL warehouse wh");
    assert!(warehouse.contains("no CAN_USE (only CAN_VIEW directly)"), "{warehouse}");
    let fix = warehouse.split("fix: databricks warehouses update-permissions wh --json '").nth(1).expect("the CLI fix");
    let body: Value = serde_json::from_str(fix.split('\'').next().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"access_control_list": [{"service_principal_name": FUNCTION_SP, "permission_level": "CAN_USE"}]})
    );

    // The fix, applied as the CLI would send it, makes the warehouse check pass.
    let res = emu
        .http
        .patch(format!("{}/api/2.0/permissions/warehouses/wh", emu.url))
        .bearer_auth(PAT)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let checks = segment_delta::databricks::setup::run(&catalog, LAKE, &[], false, Some(FUNCTION_SP)).await;
    let out = lines(&checks);
    assert!(line_with(&out, "may use SQL warehouse wh").ends_with("CAN_USE directly"), "{out:#?}");

    // A principal the workspace and the metastore do not know.
    let checks = segment_delta::databricks::setup::run(&catalog, LAKE, &[], false, Some("ghost")).await;
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(ToString::to_string).collect();
    assert!(line_with(&failed, "ghost is neither a service principal").contains("Service principals → Add"));
    assert!(
        line_with(&failed, "cannot read the effective permissions of ghost on catalog main")
            .contains("Unity Catalog does not know ghost")
    );
    assert!(line_with(&failed, "may not use SQL warehouse wh").contains("\"user_name\":\"ghost\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_checks_the_service_principal_the_settings_authenticate_as() {
    use segment_delta::databricks::setup::{Subject, run_for};
    let emu = Emulator::start(&[
        "--client-id",
        FUNCTION_SP,
        "--client-secret",
        "sp-secret",
        "--external-location",
        "bronze=abfss://lake@acct.dfs.core.windows.net/",
        "--grant",
        &format!("principal={FUNCTION_SP}:securable=catalog/main:privileges=ALL_PRIVILEGES"),
    ]);
    let auth = Auth::OAuthM2m { client_id: FUNCTION_SP.into(), client_secret: Secret::new("sp-secret") };
    let subject = Subject::of_settings(&auth);
    assert_eq!(subject, Subject::Configured { id: FUNCTION_SP.into(), setting: "DATABRICKS_CLIENT_ID" });
    let catalog = segment_delta::databricks::Databricks::new(&emu.config(auth)).unwrap();
    let out = lines(&run_for(&catalog, LAKE, &[], false, subject).await);
    let who = line_with(&out, "checking the grants of");
    assert!(
        who.ends_with(&format!(
            "{FUNCTION_SP}: the service principal these settings authenticate as (DATABRICKS_CLIENT_ID)"
        )),
        "{who}"
    );
    assert!(line_with(&out, "credentials (OAuth machine-to-machine) accepted as").ends_with(FUNCTION_SP));
    assert!(line_with(&out, "on catalog main").contains("ALL PRIVILEGES granted directly"), "{out:#?}");
    assert!(line_with(&out, "databricks-sql-access").contains(&format!("service principal {FUNCTION_SP} has")));

    let msi =
        |client_id: Option<&str>| Auth::AzureMsi { endpoint: None, header: None, client_id: client_id.map(Into::into) };
    assert_eq!(Subject::of_settings(&msi(None)), Subject::Caller);
    assert_eq!(
        Subject::of_settings(&msi(Some("mi-client"))),
        Subject::Configured { id: "mi-client".into(), setting: "AZURE_CLIENT_ID" }
    );
    assert_eq!(Subject::of_settings(&Auth::Pat(Secret::new(PAT))), Subject::Caller);
}

/// A stand-in for the Azure CLI: records its arguments, then prints what `az account get-access-token --output json`
/// prints, with a token the emulator issued to `account` (through its managed identity endpoint).
fn fake_az(dir: &std::path::Path, emu: &Emulator, account: &str) -> std::path::PathBuf {
    let script = format!(
        r#"#!/usr/bin/env python3
import json, sys, urllib.request
open({args:?}, "w").write(" ".join(sys.argv[1:]))
req = urllib.request.Request({url:?} + "/msi/token?api-version=2019-08-01&resource=2ff814a6-3304-4ab8-85cb-cd0e6f879c1d&client_id={account}",
                             headers={{"X-IDENTITY-HEADER": "host-secret"}})
t = json.load(urllib.request.urlopen(req))
print(json.dumps({{"accessToken": t["access_token"], "expiresOn": "2030-01-01 00:00:00.000000",
                  "expires_on": int(t["expires_on"]), "tokenType": "Bearer", "tenant": "t"}}))
"#,
        args = dir.join("args").display().to_string(),
        url = emu.url,
    );
    script_file(&dir.join("az"), &script)
}

/// Writes an executable script.
fn script_file(path: &std::path::Path, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_runs_with_the_azure_cli_account_of_a_developer() {
    use segment_delta::databricks::setup::{Subject, run_for};
    let emu = Emulator::start(&[
        "--identity-header",
        "host-secret",
        "--user",
        "user_name=dev@example.com:entitlements=databricks-sql-access",
        "--external-location",
        "bronze=abfss://lake@acct.dfs.core.windows.net/",
        "--grant",
        "principal=dev@example.com:securable=catalog/main:privileges=ALL_PRIVILEGES",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), &emu, "dev@example.com");
    let auth = Auth::AzureCli { program: az.display().to_string(), tenant_id: Some("tenant-1".into()) };
    assert_eq!(Subject::of_settings(&auth), Subject::Caller);
    let catalog = segment_delta::databricks::Databricks::new(&emu.config(auth)).unwrap();
    let out = lines(&run_for(&catalog, LAKE, &[], false, Subject::Caller).await);
    assert!(
        line_with(&out, "credentials (Microsoft Entra through the Azure CLI (az login)) accepted as")
            .ends_with("dev@example.com"),
        "{out:#?}"
    );
    assert!(
        line_with(&out, "checking the grants of dev@example.com").contains("the account signed in to the Azure CLI")
    );
    assert!(line_with(&out, "on catalog main").contains("ALL PRIVILEGES granted directly"), "{out:#?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("args")).unwrap(),
        "account get-access-token --output json --scope 2ff814a6-3304-4ab8-85cb-cd0e6f879c1d/.default --tenant tenant-1"
    );

    // Not signed in: the CLI's own explanation, and what to run.
    let signed_out = script_file(
        &dir.path().join("az-signed-out"),
        "#!/bin/sh\necho \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1\n",
    );
    for (program, says) in [
        (signed_out.display().to_string(), "Please run 'az login' to setup account."),
        (dir.path().join("no-such-az").display().to_string(), "not found: install the Azure CLI"),
    ] {
        let auth = Auth::AzureCli { program, tenant_id: None };
        let catalog = segment_delta::databricks::Databricks::new(&emu.config(auth)).unwrap();
        let checks = run_for(&catalog, LAKE, &[], false, Subject::Caller).await;
        let out = lines(&checks);
        assert_eq!(checks.len(), 1, "{out:#?}");
        assert!(!checks[0].ok);
        assert!(out[0].contains("no Databricks token") && out[0].contains(says), "{out:#?}");
        assert!(out[0].contains("run `az login`"), "{out:#?}");
    }
}

/// `check` runs as the function itself: an identity that is no workspace admin, with least privilege (USE
/// CATALOG on the catalog, its table privileges on the schema through a group, CAN USE on the warehouse through the
/// same group). What it may read of itself is checked; what only an admin may read is a warning, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_for_a_least_privilege_function_identity_that_is_not_an_admin() {
    use segment_delta::databricks::setup::{Subject, run_for};
    const OTHER_SP: &str = "7d1c0a52-9b3e-4f6a-8c21-5e4d3b2a1f09";
    let emu = Emulator::start(&[
        "--client-id",
        FUNCTION_SP,
        "--client-secret",
        "sp-secret",
        "--service-principal",
        &format!("application_id={FUNCTION_SP}:display_name=segment-delta-func"),
        "--service-principal",
        &format!("application_id={OTHER_SP}"),
        "--group",
        &format!("display_name=loaders:members={FUNCTION_SP}:entitlements=databricks-sql-access"),
        "--external-location",
        "bronze=abfss://lake@acct.dfs.core.windows.net/",
        "--warehouse",
        "wh:ddl:RUNNING",
        "--schema",
        "main.segment",
        "--grant",
        &format!("principal={FUNCTION_SP}:securable=catalog/main:privileges=USE_CATALOG"),
        "--grant",
        "principal=loaders:securable=schema/main.segment:privileges=USE_SCHEMA,CREATE_TABLE,MODIFY,SELECT",
        "--grant",
        &format!(
            "principal={FUNCTION_SP}:securable=external_location/bronze:privileges=CREATE_EXTERNAL_TABLE,READ_FILES,WRITE_FILES"
        ),
        "--warehouse-permission",
        "warehouse=wh:group_name=loaders:level=CAN_USE",
    ]);
    let auth = Auth::OAuthM2m { client_id: FUNCTION_SP.into(), client_secret: Secret::new("sp-secret") };
    let subject = Subject::of_settings(&auth);
    let mut cfg = emu.config(auth);
    cfg.warehouse_id = Some("wh".into());
    let catalog = segment_delta::databricks::Databricks::new(&cfg).unwrap();
    let checks = run_for(&catalog, LAKE, &["segment"], false, subject).await;
    let out = lines(&checks);
    assert!(checks.iter().all(|c| c.ok), "{out:#?}");
    // The schema exists: USE CATALOG is all the catalog must give; the rest comes from the schema's grants.
    let on_catalog = line_with(&out, "on catalog main");
    assert!(
        on_catalog.contains(&format!("{FUNCTION_SP} has USE CATALOG on catalog main: USE CATALOG granted directly"))
    );
    assert!(!on_catalog.contains("CREATE SCHEMA"), "{on_catalog}");
    let on_schema = line_with(&out, "on schema main.segment");
    assert!(on_schema.contains("USE SCHEMA, CREATE TABLE, MODIFY, SELECT on schema main.segment"), "{on_schema}");
    assert!(on_schema.ends_with("through group loaders"), "{on_schema}");
    // Its own groups and entitlements, read from what the workspace says of the caller.
    assert!(line_with(&out, "databricks-sql-access").ends_with("entitlement through group loaders"), "{out:#?}");
    // The warehouse's permissions are for admins and managers: not readable here, so a warning.
    let warehouse = line_with(&out, "SQL warehouse wh:");
    assert!(warehouse.starts_with("[warn] cannot read the permissions of SQL warehouse wh"), "{warehouse}");
    assert!(warehouse.contains("PERMISSION_DENIED"), "{warehouse}");

    // Another identity, looked up by one who is not an admin: the workspace shows its id only, so its entitlements
    // and groups cannot be checked. That is said, and nothing is reported missing that may come through a group.
    let checks = run_for(&catalog, LAKE, &["segment"], false, Subject::Given(OTHER_SP.into())).await;
    let out = lines(&checks);
    assert!(checks.iter().all(|c| c.ok), "{out:#?}");
    assert!(out.iter().all(|l| !l.contains("neither a service principal")), "{out:#?}");
    let entitlements = line_with(&out, &format!("{OTHER_SP} is in the workspace"));
    assert!(entitlements.starts_with("[warn]") && entitlements.contains("shown to admins only"), "{entitlements}");
    let on_catalog = line_with(&out, "on catalog main");
    assert!(on_catalog.starts_with(&format!("[warn] {OTHER_SP} holds no USE CATALOG on catalog main")), "{on_catalog}");
}
