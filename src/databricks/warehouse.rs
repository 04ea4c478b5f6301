//! The SQL warehouse DDL runs on: the configured one, else the one named `segment-delta`, else a new 2X-Small
//! serverless one; started and awaited when stopped.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::databricks::client::{ApiError, Client};

pub const WAREHOUSE_NAME: &str = "segment-delta";

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("warehouse {id} is {state}")]
    Unusable { id: String, state: String },
    #[error("warehouse {id} did not reach RUNNING within {seconds} s (last state {state})")]
    Timeout { id: String, seconds: u64, state: String },
}

/// The body that creates the loader's own small warehouse.
pub fn create_body() -> Value {
    json!({"name": WAREHOUSE_NAME, "cluster_size": "2X-Small", "min_num_clusters": 1, "max_num_clusters": 1,
           "auto_stop_mins": 10, "enable_serverless_compute": true, "warehouse_type": "PRO"})
}

/// Finds or creates the warehouse; returns its id and whether it was created.
pub async fn resolve(
    client: &Client,
    configured: Option<&str>,
    create: bool,
) -> Result<(String, bool), WarehouseError> {
    if let Some(id) = configured {
        client.call(Method::GET, &format!("/api/2.0/sql/warehouses/{id}"), None).await?;
        return Ok((id.to_string(), false));
    }
    let list = client.call(Method::GET, "/api/2.0/sql/warehouses", None).await?;
    if let Some(found) =
        list["warehouses"].as_array().into_iter().flatten().find(|w| w["name"].as_str() == Some(WAREHOUSE_NAME))
    {
        return Ok((found["id"].as_str().unwrap_or_default().to_string(), false));
    }
    if !create {
        return Err(WarehouseError::Unusable { id: WAREHOUSE_NAME.into(), state: "missing".into() });
    }
    let created = client.call(Method::POST, "/api/2.0/sql/warehouses", Some(&create_body())).await?;
    Ok((created["id"].as_str().unwrap_or_default().to_string(), true))
}

/// Starts the warehouse when it is stopped and waits until it runs.
pub async fn ensure_running(client: &Client, id: &str, deadline: Duration) -> Result<(), WarehouseError> {
    let started = Instant::now();
    let path = format!("/api/2.0/sql/warehouses/{id}");
    let mut asked_to_start = false;
    loop {
        let w = client.call(Method::GET, &path, None).await?;
        let state = w["state"].as_str().unwrap_or("").to_string();
        match state.as_str() {
            "RUNNING" => return Ok(()),
            "STOPPED" | "STOPPING" if !asked_to_start => {
                client.call(Method::POST, &format!("{path}/start"), None).await?;
                asked_to_start = true;
            }
            "DELETING" | "DELETED" => return Err(WarehouseError::Unusable { id: id.into(), state }),
            _ => {}
        }
        if started.elapsed() > deadline {
            return Err(WarehouseError::Timeout { id: id.into(), seconds: deadline.as_secs(), state });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
