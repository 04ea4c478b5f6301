//! The Databricks emulator, driven over HTTP as a separate process: authentication, warehouses, statements whose
//! DDL lands in a real local Delta log, Unity Catalog's view of it, and the faults tests can inject.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use deltalake::kernel::{DataType, StructField};
use deltalake::operations::create::CreateBuilder;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PAT: &str = "dapi-test-token";

struct Emulator {
    _child: Child,
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Emulator {
    async fn start(extra: &[&str]) -> Emulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_databricks-emulator"))
            .args(["--port", "0", "--token", PAT])
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the emulator");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the emulator prints its address in time")
            .expect("read stdout")
            .expect("a line");
        let base = line.strip_prefix("listening on ").expect("listening on <url>").to_string();
        Emulator { _child: child, base, http: reqwest::Client::new() }
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        Answer { status, headers, body }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, Some(PAT), None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(PAT), Some(body)).await
    }

    /// Runs a statement on warehouse `wh`, waiting up to 30 s; returns the statement body.
    async fn sql(&self, statement: &str) -> Value {
        let body = json!({"warehouse_id": "wh", "statement": statement, "wait_timeout": "30s"});
        let a = self.post("/api/2.0/sql/statements", body).await;
        assert_eq!(a.status, 200, "{statement}: {}", a.body);
        a.body
    }

    async fn statement_state(&self, id: &str) -> String {
        let a = self.get(&format!("/api/2.0/sql/statements/{id}")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["status"]["state"].as_str().unwrap_or_default().to_string()
    }
}

fn state(statement: &Value) -> &str {
    statement["status"]["state"].as_str().unwrap_or_default()
}

fn error_message(statement: &Value) -> &str {
    statement["status"]["error"]["message"].as_str().unwrap_or_default()
}

async fn make_delta_table(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    CreateBuilder::new()
        .with_location(path.to_str().unwrap())
        .with_columns([StructField::new("id", DataType::STRING, true), StructField::new("seq", DataType::LONG, true)])
        .await
        .expect("create the Delta table");
}

#[tokio::test]
async fn statements_need_a_valid_bearer_token() {
    let emu = Emulator::start(&["--warehouse", "wh:ddl:RUNNING"]).await;
    let body = json!({"warehouse_id": "wh", "statement": "SELECT 1", "wait_timeout": "10s"});
    for token in [None, Some("wrong")] {
        let a = emu.call(Method::POST, "/api/2.0/sql/statements", token, Some(body.clone())).await;
        assert_eq!(a.status, 401, "{token:?}");
        assert_eq!(a.body["error_code"], "UNAUTHENTICATED");
    }
    let a = emu.call(Method::POST, "/api/2.0/sql/statements", Some(PAT), Some(body)).await;
    assert_eq!(a.status, 200);
    assert_eq!(state(&a.body), "SUCCEEDED", "{}", a.body);
    assert_eq!(a.body["result"]["data_array"], json!([["1"]]));
    assert_eq!(a.body["manifest"]["schema"]["columns"][0]["type_name"], "INT");
}

#[tokio::test]
async fn ddl_changes_the_delta_log_and_unity_catalog_follows() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("web/tracks");
    make_delta_table(&location).await;
    let emu = Emulator::start(&["--warehouse", "wh:ddl:RUNNING"]).await;
    let loc = location.to_str().unwrap();

    let missing = emu.sql(&format!("CREATE TABLE `main`.`web`.`tracks` USING DELTA LOCATION '{loc}'")).await;
    assert_eq!(state(&missing), "FAILED");
    assert!(error_message(&missing).starts_with("[SCHEMA_NOT_FOUND]"), "{missing}");

    assert_eq!(state(&emu.sql("CREATE SCHEMA IF NOT EXISTS `main`.`web`").await), "SUCCEEDED");
    let create = format!("CREATE TABLE IF NOT EXISTS `main`.`web`.`tracks` USING DELTA LOCATION '{loc}'");
    assert_eq!(state(&emu.sql(&create).await), "SUCCEEDED");
    let t = emu.get("/api/2.1/unity-catalog/tables/main.web.tracks").await;
    assert_eq!(t.status, 200);
    assert_eq!(t.body["table_type"], "EXTERNAL");
    assert_eq!(t.body["data_source_format"], "DELTA");
    assert_eq!(t.body["columns"].as_array().unwrap().len(), 2);

    let alter = "ALTER TABLE `main`.`web`.`tracks` ADD COLUMNS (`plan` STRING, `seats` BIGINT, `2fa_enabled` BOOLEAN, \
                 `score` DOUBLE, `renewed_at` TIMESTAMP)";
    assert_eq!(state(&emu.sql(alter).await), "SUCCEEDED");

    let t = emu.get("/api/2.1/unity-catalog/tables/main.web.tracks").await;
    let columns: Vec<(String, String, String, i64)> = t.body["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("name"), s("type_name"), s("type_text"), c["position"].as_i64().unwrap())
        })
        .collect();
    let expected = [
        ("id", "STRING", "string"),
        ("seq", "LONG", "bigint"),
        ("plan", "STRING", "string"),
        ("seats", "LONG", "bigint"),
        ("2fa_enabled", "BOOLEAN", "boolean"),
        ("score", "DOUBLE", "double"),
        ("renewed_at", "TIMESTAMP", "timestamp"),
    ];
    let expected: Vec<(String, String, String, i64)> = expected
        .iter()
        .enumerate()
        .map(|(i, (n, tn, tt))| (n.to_string(), tn.to_string(), tt.to_string(), i as i64))
        .collect();
    assert_eq!(columns, expected);

    // The Delta log itself has the nullable columns, read back with deltalake.
    let table = deltalake::open_table(url::Url::from_directory_path(&location).unwrap()).await.unwrap();
    let schema = table.snapshot().unwrap().schema();
    let plan = schema.fields().find(|f| f.name() == "plan").expect("plan in the Delta schema");
    assert!(plan.is_nullable());
    assert_eq!(table.version(), Some(1));

    let again = emu.sql("ALTER TABLE `main`.`web`.`tracks` ADD COLUMNS (`Plan` STRING)").await;
    assert_eq!(state(&again), "FAILED");
    assert!(error_message(&again).starts_with("[FIELDS_ALREADY_EXISTS]"), "{again}");
    assert_eq!(again["status"]["error"]["error_code"], "ALREADY_EXISTS");

    let unquoted = emu.sql("ALTER TABLE main.web.tracks ADD COLUMNS (2fa_backup BOOLEAN)").await;
    assert_eq!(state(&unquoted), "FAILED");
    assert!(error_message(&unquoted).starts_with("[INVALID_IDENTIFIER]"), "{unquoted}");
    let quoted = emu.sql("ALTER TABLE main.web.tracks ADD COLUMNS (`2fa_backup` BOOLEAN)").await;
    assert_eq!(state(&quoted), "SUCCEEDED", "{quoted}");

    let syntax = emu.sql("ALTER TABLE main.web.tracks ADD COLUMNS (plan-name STRING)").await;
    assert!(error_message(&syntax).starts_with("[PARSE_SYNTAX_ERROR]"), "{syntax}");
    let no_table = emu.sql("ALTER TABLE main.web.nope ADD COLUMNS (`x` STRING)").await;
    assert!(error_message(&no_table).starts_with("[TABLE_OR_VIEW_NOT_FOUND]"), "{no_table}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let no_log = emu.sql(&format!("CREATE TABLE main.web.empty LOCATION '{}'", empty.to_str().unwrap())).await;
    assert!(error_message(&no_log).starts_with("[DELTA_CREATE_EXTERNAL_TABLE_WITHOUT_TXN_LOG]"), "{no_log}");

    let missing = emu.get("/api/2.1/unity-catalog/tables/main.web.nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error_code"], "TABLE_DOES_NOT_EXIST");

    // Every statement, in order, with its final state and error class.
    let log = emu.call(Method::GET, "/_emulator/statements", None, None).await.body;
    let seen: Vec<(String, Value)> = log["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["state"].as_str().unwrap().to_string(), s["error_class"].clone()))
        .collect();
    assert_eq!(seen.len(), 10);
    assert_eq!(seen[0], ("FAILED".into(), json!("SCHEMA_NOT_FOUND")));
    assert_eq!(seen[3], ("SUCCEEDED".into(), Value::Null));
    assert_eq!(seen[4], ("FAILED".into(), json!("FIELDS_ALREADY_EXISTS")));
    assert_eq!(seen[5], ("FAILED".into(), json!("INVALID_IDENTIFIER")));
}

#[tokio::test]
async fn injected_faults_answer_with_retry_after() {
    let emu = Emulator::start(&["--warehouse", "wh:ddl:RUNNING"]).await;
    let fault = json!({"status": 429, "count": 2, "path_prefix": "/api/2.0/sql/statements", "retry_after_secs": 3});
    let a = emu.call(Method::POST, "/_emulator/faults", None, Some(fault)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let body = json!({"warehouse_id": "wh", "statement": "SELECT 1", "wait_timeout": "10s"});
    for _ in 0..2 {
        let a = emu.post("/api/2.0/sql/statements", body.clone()).await;
        assert_eq!(a.status, 429);
        assert_eq!(a.body["error_code"], "REQUEST_LIMIT_EXCEEDED");
        assert_eq!(a.headers.get("retry-after").unwrap(), "3");
    }
    // Other paths are not affected, and the fault is used up.
    assert_eq!(emu.get("/api/2.0/sql/warehouses").await.status, 200);
    assert_eq!(state(&emu.post("/api/2.0/sql/statements", body.clone()).await.body), "SUCCEEDED");

    emu.call(Method::POST, "/_emulator/faults", None, Some(json!({"status": 503}))).await;
    let a = emu.get("/api/2.0/sql/warehouses").await;
    assert_eq!((a.status, a.body["error_code"].as_str()), (503, Some("TEMPORARILY_UNAVAILABLE")));
    assert_eq!(a.headers.get("retry-after").unwrap(), "1");
}

#[tokio::test]
async fn issued_tokens_work_until_they_expire() {
    let emu = Emulator::start(&[
        "--warehouse",
        "wh:ddl:RUNNING",
        "--client-id",
        "sp-id",
        "--client-secret",
        "sp-secret",
        "--identity-header",
        "idh",
        "--token-ttl-secs",
        "1",
    ])
    .await;
    let token_request = |secret: &str| {
        emu.http
            .post(format!("{}/oidc/v1/token", emu.base))
            .basic_auth("sp-id", Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&scope=all-apis")
            .send()
    };
    let bad = token_request("nope").await.unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    let ok: Value = token_request("sp-secret").await.unwrap().json().await.unwrap();
    assert_eq!(ok["token_type"], "Bearer");
    assert_eq!(ok["expires_in"], 1);
    let token = ok["access_token"].as_str().unwrap().to_string();
    assert_eq!(emu.call(Method::GET, "/api/2.0/sql/warehouses", Some(&token), None).await.status, 200);

    let msi = emu
        .http
        .get(format!("{}/msi/token?resource=2ff814a6-3304-4ab8-85cb-cd0e6f879c1d&api-version=2019-08-01", emu.base))
        .header("X-IDENTITY-HEADER", "idh")
        .send()
        .await
        .unwrap();
    assert_eq!(msi.status().as_u16(), 200);
    let msi: Value = msi.json().await.unwrap();
    assert!(msi["expires_on"].as_str().unwrap().parse::<i64>().is_ok());
    let msi_token = msi["access_token"].as_str().unwrap().to_string();
    assert_eq!(emu.call(Method::GET, "/api/2.0/sql/warehouses", Some(&msi_token), None).await.status, 200);

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let expired = emu.call(Method::GET, "/api/2.0/sql/warehouses", Some(&token), None).await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.body["error_code"], "UNAUTHENTICATED");
    assert_eq!(expired.body["message"], "Token expired.");
    assert_eq!(emu.get("/api/2.0/sql/warehouses").await.status, 200, "the PAT does not expire");
}

#[tokio::test]
async fn statements_stay_pending_until_the_warehouse_runs() {
    let emu = Emulator::start(&["--warehouse", "wh:ddl:STOPPED", "--warehouse-start-ms", "800"]).await;
    let submit = json!({"warehouse_id": "wh", "statement": "SELECT 1", "wait_timeout": "0s"});
    let a = emu.post("/api/2.0/sql/statements", submit).await;
    assert_eq!(state(&a.body), "PENDING");
    let id = a.body["statement_id"].as_str().unwrap().to_string();
    // A stopped warehouse is not started by a statement.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(emu.statement_state(&id).await, "PENDING");
    assert_eq!(emu.get("/api/2.0/sql/warehouses/wh").await.body["state"], "STOPPED");

    assert_eq!(emu.post("/api/2.0/sql/warehouses/wh/start", json!({})).await.status, 200);
    assert_eq!(emu.get("/api/2.0/sql/warehouses/wh").await.body["state"], "STARTING");
    assert_eq!(emu.statement_state(&id).await, "PENDING");
    let mut last = String::new();
    for _ in 0..100 {
        last = emu.statement_state(&id).await;
        if last == "SUCCEEDED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, "SUCCEEDED");
    assert_eq!(emu.get("/api/2.0/sql/warehouses/wh").await.body["state"], "RUNNING");

    // A statement kept RUNNING past wait_timeout with on_wait_timeout CANCEL comes back CANCELED.
    emu.call(Method::POST, "/_emulator/faults", None, Some(json!({"slow_statements_ms": 8000}))).await;
    let body =
        json!({"warehouse_id": "wh", "statement": "SELECT 1", "wait_timeout": "5s", "on_wait_timeout": "CANCEL"});
    assert_eq!(state(&emu.post("/api/2.0/sql/statements", body).await.body), "CANCELED");
}

#[tokio::test]
async fn requests_are_validated() {
    let emu = Emulator::start(&["--warehouse", "wh:ddl:RUNNING", "--warehouse-start-ms", "400"]).await;
    let base = json!({"warehouse_id": "wh", "statement": "SELECT 1"});
    for (key, value) in [("wait_timeout", "4s"), ("wait_timeout", "51s"), ("on_wait_timeout", "WAIT")] {
        let mut body = base.clone();
        body[key] = json!(value);
        let a = emu.post("/api/2.0/sql/statements", body).await;
        assert_eq!((a.status, a.body["error_code"].as_str()), (400, Some("INVALID_PARAMETER_VALUE")), "{key}={value}");
    }
    let a = emu.post("/api/2.0/sql/statements", json!({"warehouse_id": "nope", "statement": "SELECT 1"})).await;
    assert_eq!(a.status, 404);

    let warehouse = json!({"name": "segment-delta", "cluster_size": "2X-Small", "min_num_clusters": 1,
        "max_num_clusters": 1, "auto_stop_mins": 10, "enable_serverless_compute": true, "warehouse_type": "PRO"});
    for (key, bad) in [("auto_stop_mins", json!(5)), ("cluster_size", json!("Tiny")), ("max_num_clusters", json!(0))] {
        let mut body = warehouse.clone();
        body[key] = bad;
        let a = emu.post("/api/2.0/sql/warehouses", body).await;
        assert_eq!((a.status, a.body["error_code"].as_str()), (400, Some("INVALID_PARAMETER_VALUE")), "{key}");
    }
    let created = emu.post("/api/2.0/sql/warehouses", warehouse).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(emu.get(&format!("/api/2.0/sql/warehouses/{id}")).await.body["state"], "STARTING");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(emu.get(&format!("/api/2.0/sql/warehouses/{id}")).await.body["state"], "RUNNING");
    assert_eq!(emu.get("/api/2.0/sql/warehouses").await.body["warehouses"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn unity_catalog_schemas_locations_and_grants() {
    let emu = Emulator::start(&[
        "--external-location",
        "lake=abfss://lake@acct.dfs.core.windows.net/bronze",
        "--service-principal",
        "application_id=segment-delta-sp",
        "--grant",
        "principal=segment-delta-sp:securable=external_location/lake:privileges=READ_FILES,WRITE_FILES,CREATE_EXTERNAL_TABLE",
    ])
    .await;
    assert_eq!(emu.get("/api/2.1/unity-catalog/catalogs/main").await.status, 200);
    assert_eq!(emu.get("/api/2.1/unity-catalog/catalogs/other").await.body["error_code"], "CATALOG_DOES_NOT_EXIST");
    assert_eq!(emu.get("/api/2.1/unity-catalog/schemas/main.web").await.status, 404);
    let created = emu.post("/api/2.1/unity-catalog/schemas", json!({"name": "web", "catalog_name": "main"})).await;
    assert_eq!(created.body["full_name"], "main.web");
    assert_eq!(emu.get("/api/2.1/unity-catalog/schemas/main.web").await.status, 200);
    let again = emu.post("/api/2.1/unity-catalog/schemas", json!({"name": "web", "catalog_name": "main"})).await;
    assert_eq!(again.status, 409);

    let locations = emu.get("/api/2.1/unity-catalog/external-locations").await.body;
    assert_eq!(locations["external_locations"][0]["url"], "abfss://lake@acct.dfs.core.windows.net/bronze");
    let grants = emu.get("/api/2.1/unity-catalog/permissions/external_location/lake").await.body;
    assert_eq!(
        grants["privilege_assignments"],
        json!([{"principal": "segment-delta-sp",
                "privileges": ["READ_FILES", "WRITE_FILES", "CREATE_EXTERNAL_TABLE"]}])
    );
}

#[tokio::test]
async fn effective_permissions_add_what_parents_convey_per_principal() {
    let emu = Emulator::start(&[
        "--schema",
        "main.web",
        "--external-location",
        "lake=abfss://lake@acct.dfs.core.windows.net/",
        "--service-principal",
        "application_id=11111111-2222-3333-4444-555555555555:display_name=loader",
        "--group",
        "display_name=etl:members=11111111-2222-3333-4444-555555555555",
        "--group",
        "display_name=local:workspace_local=true",
        "--grant",
        "principal=etl:securable=catalog/main:privileges=USE_CATALOG,USE_SCHEMA",
        "--grant",
        "principal=11111111-2222-3333-4444-555555555555:securable=schema/main.web:privileges=MODIFY",
        "--owner",
        "securable=external_location/lake:principal=etl",
    ])
    .await;
    let sp = "11111111-2222-3333-4444-555555555555";
    // The schema's own grant, then the catalog's, marked with where they come from; per principal as granted.
    let all = emu.get("/api/2.1/unity-catalog/effective-permissions/schema/main.web").await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(
        all.body["privilege_assignments"],
        json!([
            {"principal": sp, "privileges": [{"privilege": "MODIFY"}]},
            {"principal": "etl", "privileges": [
                {"privilege": "USE_CATALOG", "inherited_from_type": "CATALOG", "inherited_from_name": "main"},
                {"privilege": "USE_SCHEMA", "inherited_from_type": "CATALOG", "inherited_from_name": "main"}]},
        ])
    );
    // Group membership is not expanded: the service principal's answer holds its own grants only.
    let mine = emu.get(&format!("/api/2.1/unity-catalog/effective-permissions/CATALOG/main?principal={sp}")).await;
    assert_eq!(mine.body, json!({}));
    let direct = emu.get("/api/2.1/unity-catalog/permissions/schema/main.web?principal=etl").await;
    assert_eq!(direct.body, json!({}));
    // Unknown principals, workspace-local groups, missing securables and bad paging are refused.
    for (path, status, code) in [
        ("effective-permissions/catalog/main?principal=nobody", 404, "PRINCIPAL_DOES_NOT_EXIST"),
        ("effective-permissions/catalog/main?principal=users", 404, "PRINCIPAL_DOES_NOT_EXIST"),
        ("effective-permissions/catalog/main?principal=local", 404, "PRINCIPAL_DOES_NOT_EXIST"),
        ("effective-permissions/catalog/other", 404, "RESOURCE_DOES_NOT_EXIST"),
        ("effective-permissions/catalog/main?max_results=10", 400, "INVALID_PARAMETER_VALUE"),
        ("effective-permissions/warehouse/main", 400, "INVALID_PARAMETER_VALUE"),
    ] {
        let a = emu.get(&format!("/api/2.1/unity-catalog/{path}")).await;
        assert_eq!((a.status, a.body["error_code"].as_str()), (status, Some(code)), "{path}: {}", a.body);
    }
    assert_eq!(emu.get("/api/2.1/unity-catalog/external-locations/lake").await.body["owner"], "etl");
    assert_eq!(emu.get("/api/2.1/unity-catalog/catalogs/main").await.body["owner"], "emulator@example.com");
}

#[tokio::test]
async fn scim_lists_identities_with_groups_and_entitlements() {
    let emu = Emulator::start(&[
        "--principal",
        "ada@example.com",
        "--service-principal",
        "application_id=app-1:display_name=loader:entitlements=allow-cluster-create",
        "--group",
        "display_name=etl:members=app-1:entitlements=databricks-sql-access",
        "--group",
        "display_name=data:members=etl",
        "--group",
        "display_name=users:entitlements=workspace-access",
    ])
    .await;
    let me = emu.get("/api/2.0/preview/scim/v2/Me").await.body;
    assert_eq!(me["userName"], "ada@example.com");
    assert!(me["groups"].as_array().unwrap().iter().any(|g| g["display"] == "admins"), "{me}");

    let found = emu.get("/api/2.0/preview/scim/v2/ServicePrincipals?filter=applicationId%20eq%20%22app-1%22").await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert_eq!(found.body["totalResults"], 1);
    assert_eq!(found.body["schemas"], json!(["urn:ietf:params:scim:api:messages:2.0:ListResponse"]));
    let sp = &found.body["Resources"][0];
    assert_eq!(sp["entitlements"], json!([{"value": "allow-cluster-create"}]));
    let groups: Vec<&str> = sp["groups"].as_array().unwrap().iter().map(|g| g["display"].as_str().unwrap()).collect();
    assert_eq!(groups, vec!["users", "etl"]);
    let etl_id = sp["groups"][1]["value"].as_str().unwrap();
    let etl = emu.get(&format!("/api/2.0/preview/scim/v2/Groups/{etl_id}")).await.body;
    assert_eq!(etl["entitlements"], json!([{"value": "databricks-sql-access"}]));
    assert_eq!(etl["groups"][0]["display"], "data");
    assert_eq!(etl["meta"]["resourceType"], "Group");
    assert_eq!(etl["members"][0]["$ref"], format!("ServicePrincipals/{}", sp["id"].as_str().unwrap()));
    let users_id = sp["groups"][0]["value"].as_str().unwrap();
    let users = emu.get(&format!("/api/2.0/preview/scim/v2/Groups/{users_id}")).await.body;
    assert_eq!(
        (users["meta"]["resourceType"].as_str(), &users["entitlements"]),
        (Some("WorkspaceGroup"), &json!([{"value": "workspace-access"}]))
    );

    let none = emu.get("/api/2.0/preview/scim/v2/Users?filter=userName%20eq%20%27bob@example.com%27").await;
    assert_eq!((none.body["totalResults"].as_u64(), none.body.get("Resources")), (Some(0), None));
    let bad = emu.get("/api/2.0/preview/scim/v2/Users?filter=userName%20is%20bob").await;
    assert_eq!((bad.status, bad.body["scimType"].as_str()), (400, Some("invalidFilter")), "{}", bad.body);
    let missing = emu.get("/api/2.0/preview/scim/v2/Groups/12").await;
    assert_eq!((missing.status, missing.body["status"].as_str()), (404, Some("404")));
    assert_eq!(missing.body["schemas"], json!(["urn:ietf:params:scim:api:messages:2.0:Error"]));
}

#[tokio::test]
async fn warehouse_permissions_list_owner_admins_and_grants() {
    let emu = Emulator::start(&[
        "--warehouse",
        "wh:ddl:RUNNING",
        "--service-principal",
        "application_id=app-1",
        "--group",
        "display_name=etl:members=app-1",
        "--warehouse-permission",
        "warehouse=wh:group_name=etl:level=CAN_USE",
    ])
    .await;
    for path in ["/api/2.0/permissions/warehouses/wh", "/api/2.0/permissions/sql/warehouses/wh"] {
        let a = emu.get(path).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            (a.body["object_id"].as_str(), a.body["object_type"].as_str()),
            (Some("/sql/warehouses/wh"), Some("warehouses"))
        );
        assert_eq!(
            a.body["access_control_list"],
            json!([
                {"user_name": "emulator@example.com", "display_name": "emulator@example.com",
                 "all_permissions": [{"permission_level": "IS_OWNER", "inherited": false}]},
                {"group_name": "etl", "all_permissions": [{"permission_level": "CAN_USE", "inherited": false}]},
                {"group_name": "admins", "all_permissions": [{"permission_level": "CAN_MANAGE", "inherited": true,
                                                              "inherited_from_object": ["/sql/warehouses/"]}]},
            ])
        );
    }
    let body = json!({"access_control_list": [{"service_principal_name": "app-1", "permission_level": "CAN_MANAGE"}]});
    let a = emu.call(Method::PATCH, "/api/2.0/permissions/warehouses/wh", Some(PAT), Some(body)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["access_control_list"][2]["service_principal_name"], "app-1");
    let bad = json!({"access_control_list": [{"service_principal_name": "nobody", "permission_level": "CAN_USE"}]});
    let a = emu.call(Method::PATCH, "/api/2.0/permissions/warehouses/wh", Some(PAT), Some(bad)).await;
    assert_eq!((a.status, a.body["error_code"].as_str()), (400, Some("INVALID_PARAMETER_VALUE")));
    assert_eq!(emu.get("/api/2.0/permissions/warehouses/nope").await.status, 404);
}

#[tokio::test]
async fn oauth_tokens_identify_their_service_principal() {
    let emu = Emulator::start(&["--client-id", "sp-client", "--client-secret", "s"]).await;
    let res = emu
        .http
        .post(format!("{}/oidc/v1/token", emu.base))
        .basic_auth("sp-client", Some("s"))
        .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
        .send()
        .await
        .unwrap();
    let token: Value = res.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap();
    let me = emu.call(Method::GET, "/api/2.0/preview/scim/v2/Me", Some(token), None).await.body;
    assert_eq!(me["userName"], "sp-client");
    assert_eq!(emu.get("/api/2.0/preview/scim/v2/Me").await.body["userName"], "segment-delta");
}
