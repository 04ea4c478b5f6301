//! Everything the emulator remembers, behind one lock, plus a change counter that waiters watch.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::control::Fault;
use crate::scim::Directory;
use crate::statements::Statement;
use crate::unity::Catalog;
use crate::warehouses::{AclEntry, Warehouse, WarehouseSeed};

/// An Entra ID (Azure AD) app registration the Entra-shaped token endpoint accepts.
#[derive(Clone)]
pub struct EntraClient {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub federated_token: Option<String>,
}

/// A privilege assignment on one securable, from `--grant`.
#[derive(Clone, Debug)]
pub struct Grant {
    pub principal: String,
    pub securable_type: String,
    pub full_name: String,
    pub privileges: Vec<String>,
}

/// Where `GET .../unity-catalog/tables/...` takes `columns` from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UcColumns {
    /// The table's Delta log as it is now.
    Live,
    /// What the catalog recorded at the last CREATE TABLE or ALTER TABLE run through SQL: columns that another
    /// writer added straight to the Delta log stay invisible until DDL runs, as in a real metastore.
    Catalog,
}

/// Start-up settings; never changed afterwards.
pub struct Settings {
    pub token: String,
    pub client: Option<(String, String)>,
    pub identity_header: Option<String>,
    pub entra: Option<EntraClient>,
    pub token_ttl: Duration,
    pub warehouse_start: Duration,
    pub result_ttl: Duration,
    pub catalogs: Vec<String>,
    pub schemas: Vec<(String, String)>,
    pub warehouses: Vec<WarehouseSeed>,
    pub external_locations: Vec<(String, String)>,
    pub grants: Vec<Grant>,
    pub uc_columns: UcColumns,
    /// Who the caller of the personal access token is, as the SCIM `Me` endpoint answers.
    pub principal: String,
    /// Users, service principals and groups of the workspace.
    pub directory: Directory,
    /// Owners other than the default, as `(securable type, full name, principal)`.
    pub owners: Vec<(String, String, String)>,
    /// Permissions on seeded warehouses, as `(warehouse id, entry)`.
    pub warehouse_acl: Vec<(String, AclEntry)>,
}

impl Settings {
    /// The owner of a catalog, schema or external location.
    pub fn owner(&self, securable_type: &str, full_name: &str) -> String {
        self.owners
            .iter()
            .find(|(t, n, _)| t == securable_type && n.eq_ignore_ascii_case(full_name))
            .map_or_else(|| crate::unity::OWNER.to_string(), |(_, _, p)| p.clone())
    }
}

/// Mutable state. Never held across an `.await`.
pub struct Inner {
    /// Issued OAuth / managed identity / Entra tokens: when each expires and whom it identifies. The PAT never
    /// expires and identifies `--principal`.
    pub tokens: HashMap<String, (Instant, String)>,
    pub warehouses: Vec<Warehouse>,
    pub statements: HashMap<String, Statement>,
    /// Statement ids in the order they were received.
    pub order: Vec<String>,
    pub uc: Catalog,
    pub faults: Vec<Fault>,
    pub slow_statements: Duration,
}

impl Inner {
    fn new(settings: &Settings) -> Self {
        Inner {
            tokens: HashMap::new(),
            warehouses: settings
                .warehouses
                .iter()
                .map(|seed| {
                    let mut w = Warehouse::from_seed(seed);
                    w.acl =
                        settings.warehouse_acl.iter().filter(|(id, _)| *id == w.id).map(|(_, e)| e.clone()).collect();
                    w
                })
                .collect(),
            statements: HashMap::new(),
            order: Vec::new(),
            uc: Catalog::new(&settings.catalogs, &settings.schemas),
            faults: Vec::new(),
            slow_statements: Duration::ZERO,
        }
    }
}

pub struct Emulator {
    pub settings: Settings,
    /// `http://127.0.0.1:<port>`, for the host names in warehouse bodies.
    pub base_url: String,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    /// Serialises statements' effects on the catalog and the Delta logs, as one metastore would.
    pub ddl: tokio::sync::Mutex<()>,
}

impl Emulator {
    pub fn new(settings: Settings, base_url: String) -> Self {
        let inner = Mutex::new(Inner::new(&settings));
        Emulator { settings, base_url, inner, changed: watch::Sender::new(0), ddl: tokio::sync::Mutex::new(()) }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes everything waiting for a warehouse or statement to change state.
    pub fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Back to the state given on the command line. Issued tokens survive, so clients keep their sessions.
    pub fn reset(&self) {
        let mut inner = self.lock();
        let tokens = std::mem::take(&mut inner.tokens);
        *inner = Inner::new(&self.settings);
        inner.tokens = tokens;
        drop(inner);
        self.notify();
    }

    /// Waits until `done` holds or `deadline` passes; returns whether it holds.
    pub async fn wait_until(&self, deadline: tokio::time::Instant, done: impl Fn(&Inner) -> bool) -> bool {
        let mut rx = self.subscribe();
        loop {
            if done(&self.lock()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return done(&self.lock()),
            }
        }
    }
}

/// Milliseconds since the epoch, as Unity Catalog reports `created_at`.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
