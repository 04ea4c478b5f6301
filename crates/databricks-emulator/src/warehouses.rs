//! SQL warehouses: list, get, create (validated like the real API), start and stop, with timed state changes.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::errors::{ApiError, Resp};
use crate::scim::Kind;
use crate::state::Emulator;

pub const CLUSTER_SIZES: [&str; 9] =
    ["2X-Small", "X-Small", "Small", "Medium", "Large", "X-Large", "2X-Large", "3X-Large", "4X-Large"];
const WAREHOUSE_TYPES: [&str; 3] = ["PRO", "CLASSIC", "TYPE_UNSPECIFIED"];
const SPOT_POLICIES: [&str; 3] = ["COST_OPTIMIZED", "RELIABILITY_OPTIMIZED", "POLICY_UNSPECIFIED"];
const MAX_CLUSTERS: i64 = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Deleting,
    Deleted,
}

impl WhState {
    pub fn as_str(self) -> &'static str {
        match self {
            WhState::Starting => "STARTING",
            WhState::Running => "RUNNING",
            WhState::Stopping => "STOPPING",
            WhState::Stopped => "STOPPED",
            WhState::Deleting => "DELETING",
            WhState::Deleted => "DELETED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "STARTING" => WhState::Starting,
            "RUNNING" => WhState::Running,
            "STOPPING" => WhState::Stopping,
            "STOPPED" => WhState::Stopped,
            "DELETING" => WhState::Deleting,
            "DELETED" => WhState::Deleted,
            _ => return None,
        })
    }
}

/// A warehouse given on the command line (`--warehouse id:name:state`).
#[derive(Clone, Debug)]
pub struct WarehouseSeed {
    pub id: String,
    pub name: String,
    pub state: WhState,
}

/// One permission on a warehouse: a user, service principal (application id) or group, and its level.
#[derive(Clone, Debug, PartialEq)]
pub struct AclEntry {
    pub kind: Kind,
    pub principal: String,
    pub level: String,
}

/// The levels the Permissions API takes for a warehouse (`IS_OWNER` is the creator's).
pub const LEVELS: [&str; 4] = ["CAN_VIEW", "CAN_MONITOR", "CAN_USE", "CAN_MANAGE"];

#[derive(Clone, Debug)]
pub struct Warehouse {
    pub id: String,
    pub name: String,
    /// Who created it: its `creator_name`, and the holder of `IS_OWNER`.
    pub creator: String,
    pub acl: Vec<AclEntry>,
    pub cluster_size: String,
    pub min_num_clusters: i64,
    pub max_num_clusters: i64,
    pub auto_stop_mins: i64,
    pub enable_serverless_compute: bool,
    pub enable_photon: bool,
    pub warehouse_type: String,
    pub spot_instance_policy: String,
    pub state: WhState,
    /// Bumped on every transition, so a timed transition scheduled earlier can tell it is stale.
    pub generation: u64,
}

impl Warehouse {
    pub fn from_seed(seed: &WarehouseSeed) -> Self {
        Warehouse {
            id: seed.id.clone(),
            name: seed.name.clone(),
            creator: crate::unity::OWNER.to_string(),
            acl: Vec::new(),
            cluster_size: "2X-Small".into(),
            min_num_clusters: 1,
            max_num_clusters: 1,
            auto_stop_mins: 10,
            enable_serverless_compute: true,
            enable_photon: true,
            warehouse_type: "PRO".into(),
            spot_instance_policy: "COST_OPTIMIZED".into(),
            state: seed.state,
            generation: 0,
        }
    }

    fn to_json(&self, base_url: &str) -> Value {
        let host = base_url.trim_start_matches("http://");
        let running = self.state == WhState::Running;
        json!({
            "id": self.id,
            "name": self.name,
            "cluster_size": self.cluster_size,
            "min_num_clusters": self.min_num_clusters,
            "max_num_clusters": self.max_num_clusters,
            "auto_stop_mins": self.auto_stop_mins,
            "enable_serverless_compute": self.enable_serverless_compute,
            "enable_photon": self.enable_photon,
            "warehouse_type": self.warehouse_type,
            "spot_instance_policy": self.spot_instance_policy,
            "state": self.state.as_str(),
            "num_clusters": if running { 1 } else { 0 },
            "num_active_sessions": 0,
            "creator_name": self.creator,
            "health": {"status": "HEALTHY"},
            "odbc_params": {"hostname": host, "path": format!("/sql/1.0/warehouses/{}", self.id),
                            "protocol": "https", "port": 443},
            "jdbc_url": format!("jdbc:databricks://{host}:443/default;transportMode=http;ssl=1;AuthMech=3;httpPath=/sql/1.0/warehouses/{};", self.id),
        })
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("RESOURCE_DOES_NOT_EXIST", format!("Warehouse {id} does not exist."))
}

pub fn list(emu: &Emulator) -> Result<Resp, ApiError> {
    let inner = emu.lock();
    let all: Vec<Value> =
        inner.warehouses.iter().filter(|w| w.state != WhState::Deleted).map(|w| w.to_json(&emu.base_url)).collect();
    Ok(Resp::ok(json!({"warehouses": all})))
}

/// Whether `w` is the warehouse `id` and not deleted.
fn is_live(w: &Warehouse, id: &str) -> bool {
    w.id == id && w.state != WhState::Deleted
}

/// The warehouse `id`, unless it is deleted.
fn live<'a>(warehouses: &'a [Warehouse], id: &str) -> Result<&'a Warehouse, ApiError> {
    warehouses.iter().find(|w| is_live(w, id)).ok_or_else(|| not_found(id))
}

pub fn get(emu: &Emulator, id: &str) -> Result<Resp, ApiError> {
    let inner = emu.lock();
    let w = live(&inner.warehouses, id)?;
    Ok(Resp::ok(w.to_json(&emu.base_url)))
}

fn int_field(body: &Map<String, Value>, key: &str, default: i64) -> Result<i64, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_i64().ok_or_else(|| ApiError::malformed(format!("Expected an integer for '{key}'"))),
    }
}

fn str_field<'a>(body: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::malformed(format!("Expected a string for '{key}'"))),
    }
}

fn bool_field(body: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::malformed(format!("Expected a boolean for '{key}'"))),
    }
}

/// `POST /api/2.0/sql/warehouses`: validates the body, creates the warehouse (owned by the caller) and starts it.
pub fn create(emu: &Arc<Emulator>, body: &Value, caller: &str) -> Result<Resp, ApiError> {
    let body = body.as_object().ok_or_else(|| ApiError::malformed("Request body must be a JSON object"))?;
    let name = str_field(body, "name")?.unwrap_or("").trim().to_string();
    if name.is_empty() || name.chars().count() >= 100 {
        return Err(ApiError::invalid("name is required and must be shorter than 100 characters"));
    }
    let cluster_size =
        str_field(body, "cluster_size")?.ok_or_else(|| ApiError::invalid("cluster_size is required"))?.to_string();
    if !CLUSTER_SIZES.contains(&cluster_size.as_str()) {
        return Err(ApiError::invalid(format!(
            "cluster_size '{cluster_size}' is not one of {}",
            CLUSTER_SIZES.join(", ")
        )));
    }
    let min = int_field(body, "min_num_clusters", 1)?;
    let max = int_field(body, "max_num_clusters", 1)?;
    if min < 1 || max < min || max > MAX_CLUSTERS {
        return Err(ApiError::invalid(format!(
            "min_num_clusters must be >= 1 and max_num_clusters must be >= min_num_clusters and <= {MAX_CLUSTERS} \
             (got {min} and {max})"
        )));
    }
    let auto_stop = int_field(body, "auto_stop_mins", 120)?;
    if auto_stop != 0 && auto_stop < 10 {
        return Err(ApiError::invalid(format!("auto_stop_mins must be 0 or >= 10 (got {auto_stop})")));
    }
    let warehouse_type = str_field(body, "warehouse_type")?.unwrap_or("TYPE_UNSPECIFIED").to_string();
    if !WAREHOUSE_TYPES.contains(&warehouse_type.as_str()) {
        return Err(ApiError::invalid(format!("warehouse_type '{warehouse_type}' is not one of PRO, CLASSIC")));
    }
    let serverless = bool_field(body, "enable_serverless_compute", false)?;
    if serverless && warehouse_type != "PRO" {
        return Err(ApiError::invalid("Serverless compute requires warehouse_type PRO"));
    }
    let spot = str_field(body, "spot_instance_policy")?.unwrap_or("COST_OPTIMIZED").to_string();
    if !SPOT_POLICIES.contains(&spot.as_str()) {
        return Err(ApiError::invalid(format!("spot_instance_policy '{spot}' is not valid")));
    }
    let photon = bool_field(body, "enable_photon", true)?;
    let id = format!("{:016x}", uuid::Uuid::new_v4().as_u128() as u64);
    {
        let mut inner = emu.lock();
        if inner.warehouses.iter().any(|w| w.name == name && w.state != WhState::Deleted) {
            return Err(ApiError::new(
                400,
                "RESOURCE_ALREADY_EXISTS",
                format!("A SQL warehouse named '{name}' already exists."),
            ));
        }
        inner.warehouses.push(Warehouse {
            id: id.clone(),
            name,
            creator: caller.to_string(),
            acl: Vec::new(),
            cluster_size,
            min_num_clusters: min,
            max_num_clusters: max,
            auto_stop_mins: auto_stop,
            enable_serverless_compute: serverless,
            enable_photon: photon,
            warehouse_type,
            spot_instance_policy: spot,
            state: WhState::Stopped,
            generation: 0,
        });
    }
    set_state(emu, &id, WhState::Starting);
    Ok(Resp::ok(json!({"id": id})))
}

/// `POST .../{id}/start`: a stopped warehouse goes STARTING then RUNNING; a running or starting one is left alone.
pub fn start(emu: &Arc<Emulator>, id: &str) -> Result<Resp, ApiError> {
    let state = current(emu, id)?;
    if matches!(state, WhState::Stopped | WhState::Stopping) {
        set_state(emu, id, WhState::Starting);
    }
    Ok(Resp::ok(json!({})))
}

/// `POST .../{id}/stop`: a running or starting warehouse goes STOPPING then STOPPED.
pub fn stop(emu: &Arc<Emulator>, id: &str) -> Result<Resp, ApiError> {
    let state = current(emu, id)?;
    if matches!(state, WhState::Running | WhState::Starting) {
        set_state(emu, id, WhState::Stopping);
    }
    Ok(Resp::ok(json!({})))
}

fn current(emu: &Emulator, id: &str) -> Result<WhState, ApiError> {
    let inner = emu.lock();
    let w = live(&inner.warehouses, id)?;
    Ok(w.state)
}

/// Sets a warehouse's state and schedules the transition that follows it: STARTING becomes RUNNING after
/// `--warehouse-start-ms`, STOPPING becomes STOPPED and DELETING becomes DELETED shortly after.
/// Returns false when there is no such warehouse.
pub fn set_state(emu: &Arc<Emulator>, id: &str, state: WhState) -> bool {
    let generation = {
        let mut inner = emu.lock();
        let Some(w) = inner.warehouses.iter_mut().find(|w| w.id == id) else {
            return false;
        };
        w.state = state;
        w.generation += 1;
        w.generation
    };
    emu.notify();
    let next = match state {
        WhState::Starting => Some((WhState::Running, emu.settings.warehouse_start)),
        WhState::Stopping => Some((WhState::Stopped, emu.settings.warehouse_start / 2)),
        WhState::Deleting => Some((WhState::Deleted, emu.settings.warehouse_start / 2)),
        _ => None,
    };
    if let Some((next, after)) = next {
        let emu = emu.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let changed = {
                let mut inner = emu.lock();
                match inner.warehouses.iter_mut().find(|w| w.id == id && w.generation == generation) {
                    Some(w) => {
                        w.state = next;
                        w.generation += 1;
                        true
                    }
                    None => false,
                }
            };
            if changed {
                emu.notify();
            }
        });
    }
    true
}

/// The JSON key naming a principal of this kind in an access control list.
fn principal_key(kind: Kind) -> &'static str {
    match kind {
        Kind::User => "user_name",
        Kind::ServicePrincipal => "service_principal_name",
        Kind::Group => "group_name",
    }
}

/// The Permissions API's view of a warehouse: the creator `IS_OWNER`, the `admins` group `CAN_MANAGE` inherited
/// from the root object `/sql/warehouses/`, and every permission given to it.
fn permissions_json(emu: &Emulator, w: &Warehouse) -> Value {
    let d = &emu.settings.directory;
    let creator_kind = if d.sp(&w.creator).is_some() { Kind::ServicePrincipal } else { Kind::User };
    let mut entries: Vec<(Kind, String, Vec<Value>)> = Vec::new();
    let mut add = |kind: Kind, principal: &str, permission: Value| match entries
        .iter_mut()
        .find(|(k, p, _)| *k == kind && p == principal)
    {
        Some((_, _, all)) => all.push(permission),
        None => entries.push((kind, principal.to_string(), vec![permission])),
    };
    add(creator_kind, &w.creator, json!({"permission_level": "IS_OWNER", "inherited": false}));
    for e in &w.acl {
        add(e.kind, &e.principal, json!({"permission_level": e.level, "inherited": false}));
    }
    add(
        Kind::Group,
        "admins",
        json!({"permission_level": "CAN_MANAGE", "inherited": true, "inherited_from_object": ["/sql/warehouses/"]}),
    );
    let list: Vec<Value> = entries
        .into_iter()
        .map(|(kind, principal, all)| {
            let mut v = json!({principal_key(kind): principal, "all_permissions": all});
            let display = match kind {
                Kind::ServicePrincipal => d.sp(&principal).map(|s| s.display_name.clone()),
                Kind::User => Some(d.user(&principal).map_or(principal.clone(), |u| u.display_name.clone())),
                Kind::Group => None,
            };
            if let Some(name) = display {
                v["display_name"] = json!(name);
            }
            v
        })
        .collect();
    json!({"object_id": format!("/sql/warehouses/{}", w.id), "object_type": "warehouses", "access_control_list": list})
}

/// `GET /api/2.0/permissions/warehouses/{id}` (or `.../permissions/sql/warehouses/{id}`): for workspace admins,
/// the warehouse's owner and principals with `CAN_MANAGE` on it (their own or a group's).
pub fn get_permissions(emu: &Emulator, id: &str, caller: &str) -> Result<Resp, ApiError> {
    let inner = emu.lock();
    let w = live(&inner.warehouses, id)?;
    let d = &emu.settings.directory;
    let groups: Vec<&str> = d.direct_groups(caller).iter().map(|g| g.display_name.as_str()).collect();
    let manages = w.acl.iter().any(|e| {
        e.level == "CAN_MANAGE"
            && match e.kind {
                Kind::Group => groups.contains(&e.principal.as_str()),
                _ => e.principal.eq_ignore_ascii_case(caller),
            }
    });
    if !(d.is_admin(caller) || w.creator.eq_ignore_ascii_case(caller) || manages) {
        return Err(ApiError::new(
            403,
            "PERMISSION_DENIED",
            format!(
                "{caller} does not have Manage permissions on /sql/warehouses/{id}. Please contact the owner or an administrator for access."
            ),
        ));
    }
    Ok(Resp::ok(permissions_json(emu, w)))
}

/// One entry of an `access_control_list` in a request: exactly one principal and a level.
pub fn acl_entry(emu: &Emulator, v: &Value) -> Result<AclEntry, ApiError> {
    let obj = v.as_object().ok_or_else(|| ApiError::malformed("access_control_list entries must be objects"))?;
    let named: Vec<(Kind, &str)> = [Kind::User, Kind::ServicePrincipal, Kind::Group]
        .into_iter()
        .filter_map(|k| obj.get(principal_key(k)).and_then(Value::as_str).map(|p| (k, p)))
        .collect();
    let [(kind, principal)] = named.as_slice() else {
        return Err(ApiError::invalid(
            "Exactly one of user_name, service_principal_name and group_name must be set in an access control entry",
        ));
    };
    let d = &emu.settings.directory;
    let known = match kind {
        Kind::User => d.user(principal).is_some(),
        Kind::ServicePrincipal => d.sp(principal).is_some(),
        Kind::Group => d.group(principal).is_some(),
    };
    if !known {
        let what = match kind {
            Kind::User => "UserName",
            Kind::ServicePrincipal => "ServicePrincipalName",
            Kind::Group => "GroupName",
        };
        return Err(ApiError::invalid(format!("Principal: {what}({principal}) does not exist")));
    }
    let level = obj.get("permission_level").and_then(Value::as_str).unwrap_or("");
    if !LEVELS.contains(&level) {
        return Err(ApiError::invalid(format!(
            "Permission level '{level}' is not one of {} for a SQL warehouse",
            LEVELS.join(", ")
        )));
    }
    Ok(AclEntry { kind: *kind, principal: principal.to_string(), level: level.to_string() })
}

/// `PATCH /api/2.0/permissions/warehouses/{id}`: adds the given permissions (one level per principal).
pub fn update_permissions(emu: &Emulator, id: &str, body: &Value) -> Result<Resp, ApiError> {
    let list = body
        .get("access_control_list")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("access_control_list is required"))?;
    let entries = list.iter().map(|v| acl_entry(emu, v)).collect::<Result<Vec<_>, _>>()?;
    let mut inner = emu.lock();
    let w = inner.warehouses.iter_mut().find(|w| is_live(w, id)).ok_or_else(|| not_found(id))?;
    for e in entries {
        w.acl.retain(|x| !(x.kind == e.kind && x.principal.eq_ignore_ascii_case(&e.principal)));
        w.acl.push(e);
    }
    Ok(Resp::ok(permissions_json(emu, w)))
}
