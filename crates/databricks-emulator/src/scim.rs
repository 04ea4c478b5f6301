//! Workspace identities and the SCIM API that reads them: service principals (named by application id), users
//! (by user name) and groups (by display name) with their members and entitlements, and `Me`.
//!
//! Every workspace has two workspace-local groups: `users`, which every user and service principal belongs to
//! (entitlements `workspace-access` and `databricks-sql-access` unless `--group display_name=users:...` says
//! otherwise), and `admins`, which holds the caller of `--principal`. Other groups are account groups unless
//! declared `workspace_local=true`; only account groups (and users and service principals) are Unity Catalog
//! principals. SCIM errors have the SCIM body (RFC 7644 §3.12), not the REST API's.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value, json};

use crate::errors::Resp;

pub const ENTITLEMENTS: [&str; 4] =
    ["workspace-access", "databricks-sql-access", "allow-cluster-create", "allow-instance-pool-create"];
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

#[derive(Clone, Debug)]
pub struct ServicePrincipal {
    pub id: String,
    pub application_id: String,
    pub display_name: String,
    pub entitlements: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub user_name: String,
    pub display_name: String,
    pub entitlements: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    pub display_name: String,
    /// An account group (a Unity Catalog principal) rather than a workspace-local one.
    pub account: bool,
    /// Names of the members: application ids, user names, or display names of groups.
    pub members: Vec<String>,
    pub entitlements: Vec<String>,
}

/// What a name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ServicePrincipal,
    User,
    Group,
}

/// A group, user or service principal as the command line declares it, before ids are assigned.
#[derive(Clone, Debug, Default)]
pub struct Declared {
    pub service_principals: Vec<(String, Option<String>, Vec<String>)>,
    pub users: Vec<(String, Vec<String>)>,
    pub groups: Vec<DeclaredGroup>,
}

/// A group as `--group` declares it.
#[derive(Clone, Debug, Default)]
pub struct DeclaredGroup {
    pub display_name: String,
    pub members: Vec<String>,
    /// `None`: the default (none, or the built-in groups' own).
    pub entitlements: Option<Vec<String>>,
    pub workspace_local: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Directory {
    pub service_principals: Vec<ServicePrincipal>,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
}

fn next_id(n: &mut u64) -> String {
    *n += 1;
    format!("{}", 4_000_000_000_000_000u64 + *n)
}

impl Directory {
    /// Builds the directory; `caller` (and `implicit_users`) become users when nothing declares them, and
    /// `implicit_sps` (OAuth client ids) service principals. Fails on a duplicate name or an unknown member.
    pub fn build(
        declared: &Declared,
        caller: &str,
        implicit_users: &[&str],
        implicit_sps: &[&str],
    ) -> Result<Directory, String> {
        let mut n = 0u64;
        let mut d = Directory::default();
        for (app, name, ent) in &declared.service_principals {
            if d.kind_of(app).is_some() {
                return Err(format!("'{app}' is declared twice"));
            }
            d.service_principals.push(ServicePrincipal {
                id: next_id(&mut n),
                application_id: app.clone(),
                display_name: name.clone().unwrap_or_else(|| app.clone()),
                entitlements: ent.clone(),
            });
        }
        for (name, ent) in &declared.users {
            if d.kind_of(name).is_some() {
                return Err(format!("'{name}' is declared twice"));
            }
            d.users.push(User {
                id: next_id(&mut n),
                user_name: name.clone(),
                display_name: name.clone(),
                entitlements: ent.clone(),
            });
        }
        for app in implicit_sps {
            if d.kind_of(app).is_none() {
                d.service_principals.push(ServicePrincipal {
                    id: next_id(&mut n),
                    application_id: app.to_string(),
                    display_name: app.to_string(),
                    entitlements: Vec::new(),
                });
            }
        }
        for name in std::iter::once(&caller).chain(implicit_users) {
            if d.kind_of(name).is_none() {
                d.users.push(User {
                    id: next_id(&mut n),
                    user_name: name.to_string(),
                    display_name: name.to_string(),
                    entitlements: Vec::new(),
                });
            }
        }
        let builtin = |name: &str| declared.groups.iter().find(|g| g.display_name == name);
        let users_ent = builtin("users")
            .and_then(|g| g.entitlements.clone())
            .unwrap_or_else(|| vec!["workspace-access".into(), "databricks-sql-access".into()]);
        if builtin("users").is_some_and(|g| !g.members.is_empty()) {
            return Err("the members of `users` are every user and service principal; it takes no members".into());
        }
        let mut admin_members = vec![caller.to_string()];
        admin_members.extend(builtin("admins").map(|g| g.members.clone()).unwrap_or_default());
        let admins_ent = builtin("admins").and_then(|g| g.entitlements.clone()).unwrap_or_else(|| {
            ENTITLEMENTS.iter().map(|e| e.to_string()).collect() // admins have every entitlement
        });
        d.groups.push(Group {
            id: next_id(&mut n),
            display_name: "users".into(),
            account: false,
            members: Vec::new(),
            entitlements: users_ent,
        });
        d.groups.push(Group {
            id: next_id(&mut n),
            display_name: "admins".into(),
            account: false,
            members: admin_members,
            entitlements: admins_ent,
        });
        for DeclaredGroup { display_name: name, members, entitlements: ent, workspace_local: local } in &declared.groups
        {
            if name == "users" || name == "admins" {
                continue;
            }
            if d.kind_of(name).is_some() {
                return Err(format!("'{name}' is declared twice"));
            }
            d.groups.push(Group {
                id: next_id(&mut n),
                display_name: name.clone(),
                account: !local,
                members: members.clone(),
                entitlements: ent.clone().unwrap_or_default(),
            });
        }
        for g in &d.groups {
            if let Some(m) = g.members.iter().find(|m| d.kind_of(m).is_none()) {
                return Err(format!(
                    "group '{}': member '{m}' is not a declared user, service principal or group",
                    g.display_name
                ));
            }
            if g.members.contains(&g.display_name) {
                return Err(format!("group '{}' cannot contain itself", g.display_name));
            }
        }
        Ok(d)
    }

    pub fn kind_of(&self, name: &str) -> Option<Kind> {
        if self.sp(name).is_some() {
            Some(Kind::ServicePrincipal)
        } else if self.user(name).is_some() {
            Some(Kind::User)
        } else if self.group(name).is_some() {
            Some(Kind::Group)
        } else {
            None
        }
    }

    /// Whether Unity Catalog knows the name: a user, a service principal or an account group.
    pub fn uc_principal(&self, name: &str) -> bool {
        matches!(self.kind_of(name), Some(Kind::ServicePrincipal | Kind::User))
            || self.group(name).is_some_and(|g| g.account)
    }

    /// Whether `caller` is a workspace admin: a member of `admins`, directly or through a group in it.
    pub fn is_admin(&self, caller: &str) -> bool {
        let mut seen: Vec<&str> = Vec::new();
        let mut queue: Vec<&Group> = self.direct_groups(caller);
        while let Some(g) = queue.pop() {
            if g.display_name == "admins" {
                return true;
            }
            if !seen.contains(&g.display_name.as_str()) {
                seen.push(&g.display_name);
                queue.extend(self.direct_groups(&g.display_name));
            }
        }
        false
    }

    pub fn sp(&self, application_id: &str) -> Option<&ServicePrincipal> {
        self.service_principals.iter().find(|s| s.application_id.eq_ignore_ascii_case(application_id))
    }

    pub fn user(&self, user_name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.user_name.eq_ignore_ascii_case(user_name))
    }

    pub fn group(&self, display_name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.display_name == display_name)
    }

    /// The groups `name` is a direct member of (every user and service principal is in `users`).
    pub fn direct_groups(&self, name: &str) -> Vec<&Group> {
        let kind = self.kind_of(name);
        self.groups
            .iter()
            .filter(|g| {
                let everyone = g.display_name == "users" && !g.account;
                (everyone && matches!(kind, Some(Kind::User | Kind::ServicePrincipal)))
                    || g.members.iter().any(|m| same_name(m, name, kind))
            })
            .collect()
    }

    fn group_refs(&self, name: &str) -> Value {
        Value::Array(
            self.direct_groups(name)
                .into_iter()
                .map(|g| {
                    json!({"display": g.display_name, "type": "direct", "value": g.id,
                           "$ref": format!("Groups/{}", g.id)})
                })
                .collect(),
        )
    }

    fn sp_json(&self, s: &ServicePrincipal) -> Value {
        let mut v = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServicePrincipal"],
            "id": s.id, "applicationId": s.application_id, "displayName": s.display_name, "active": true,
        });
        put_list(&mut v, "entitlements", entitlements(&s.entitlements));
        put_list(&mut v, "groups", self.group_refs(&s.application_id));
        v
    }

    fn user_json(&self, u: &User) -> Value {
        let mut v = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                        "urn:ietf:params:scim:schemas:extension:workspace:2.0:User"],
            "id": u.id, "userName": u.user_name, "displayName": u.display_name, "active": true,
            "emails": [{"value": u.user_name, "type": "work", "primary": true}],
        });
        put_list(&mut v, "entitlements", entitlements(&u.entitlements));
        put_list(&mut v, "groups", self.group_refs(&u.user_name));
        v
    }

    fn group_json(&self, g: &Group) -> Value {
        let everyone = g.display_name == "users" && !g.account;
        let names: Vec<String> = if everyone {
            self.users
                .iter()
                .map(|u| u.user_name.clone())
                .chain(self.service_principals.iter().map(|s| s.application_id.clone()))
                .collect()
        } else {
            g.members.clone()
        };
        let members: Vec<Value> = names
            .iter()
            .filter_map(|m| {
                let (display, id, resource) = if let Some(s) = self.sp(m) {
                    (&s.display_name, &s.id, "ServicePrincipals")
                } else if let Some(u) = self.user(m) {
                    (&u.display_name, &u.id, "Users")
                } else {
                    let c = self.group(m)?;
                    (&c.display_name, &c.id, "Groups")
                };
                Some(json!({"display": display, "value": id, "$ref": format!("{resource}/{id}")}))
            })
            .collect();
        let mut v = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "id": g.id, "displayName": g.display_name,
            "meta": {"resourceType": if g.account { "Group" } else { "WorkspaceGroup" }},
        });
        put_list(&mut v, "members", Value::Array(members));
        put_list(&mut v, "entitlements", entitlements(&g.entitlements));
        put_list(&mut v, "groups", self.group_refs(&g.display_name));
        v
    }

    /// `GET .../Me`: the caller as a User resource; a service principal's `userName` is its application id.
    pub fn me(&self, caller: &str) -> Value {
        if let Some(s) = self.sp(caller) {
            let mut v = json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                            "urn:ietf:params:scim:schemas:extension:workspace:2.0:User"],
                "id": s.id, "userName": s.application_id, "displayName": s.display_name, "active": true,
            });
            put_list(&mut v, "entitlements", entitlements(&s.entitlements));
            put_list(&mut v, "groups", self.group_refs(&s.application_id));
            return v;
        }
        match self.user(caller) {
            Some(u) => self.user_json(u),
            // A managed identity the command line did not declare.
            None => json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": caller,
                           "displayName": caller, "active": true}),
        }
    }
}

fn same_name(member: &str, name: &str, kind: Option<Kind>) -> bool {
    match kind {
        Some(Kind::Group) => member == name,
        _ => member.eq_ignore_ascii_case(name),
    }
}

fn entitlements(list: &[String]) -> Value {
    Value::Array(list.iter().map(|e| json!({"value": e})).collect())
}

/// Sets `key` only when the list is not empty, as the service leaves empty lists out.
fn put_list(v: &mut Value, key: &str, list: Value) {
    if list.as_array().is_some_and(|a| !a.is_empty()) {
        v[key] = list;
    }
}

/// A SCIM error (RFC 7644 §3.12).
pub fn scim_error(status: u16, detail: impl Into<String>, scim_type: Option<&str>) -> Resp {
    let mut body = json!({"schemas": [ERROR_SCHEMA], "detail": detail.into(), "status": status.to_string()});
    if let Some(t) = scim_type {
        body["scimType"] = json!(t);
    }
    Resp::with_status(status, body)
}

/// A parsed `filter`: one comparison `attribute op "value"` (op `eq`, `ne`, `co` or `sw`).
struct Filter {
    attribute: String,
    op: String,
    value: String,
}

fn parse_filter(f: &str) -> Result<Filter, Resp> {
    let invalid = |why: &str| scim_error(400, format!("Invalid filter '{f}': {why}"), Some("invalidFilter"));
    let f = f.trim();
    let (attribute, rest) = f.split_once(char::is_whitespace).ok_or_else(|| invalid("expected attribute op value"))?;
    let (op, value) = rest.trim_start().split_once(char::is_whitespace).ok_or_else(|| invalid("expected a value"))?;
    let value = value.trim();
    let quoted = value.len() >= 2
        && ((value.starts_with('"') && value.ends_with('"')) || (value.starts_with('\'') && value.ends_with('\'')));
    if !quoted {
        return Err(invalid("the value must be quoted"));
    }
    let inner = &value[1..value.len() - 1];
    if inner.contains(&value[..1]) {
        return Err(scim_error(
            400,
            format!("Filter '{f}': logical operators are valid SCIM but not implemented by the Databricks emulator"),
            Some("invalidFilter"),
        ));
    }
    let op = op.to_ascii_lowercase();
    if !["eq", "ne", "co", "sw"].contains(&op.as_str()) {
        return Err(invalid("supported operators are eq, ne, co and sw"));
    }
    Ok(Filter { attribute: attribute.to_string(), op, value: inner.to_string() })
}

impl Filter {
    fn matches(&self, actual: Option<&str>, case_exact: bool) -> bool {
        let Some(actual) = actual else { return self.op == "ne" };
        let (a, v) = if case_exact {
            (actual.to_string(), self.value.clone())
        } else {
            (actual.to_ascii_lowercase(), self.value.to_ascii_lowercase())
        };
        match self.op.as_str() {
            "eq" => a == v,
            "ne" => a != v,
            "co" => a.contains(&v),
            _ => a.starts_with(&v),
        }
    }
}

/// Keeps the `attributes` asked for (plus `id` and `schemas`), or drops the `excludedAttributes`.
fn project(mut v: Value, query: &HashMap<String, String>) -> Value {
    let split = |k: &str| -> Option<BTreeSet<String>> {
        query.get(k).map(|s| s.split(',').map(|a| a.trim().to_ascii_lowercase()).filter(|a| !a.is_empty()).collect())
    };
    if let Some(obj) = v.as_object_mut() {
        if let Some(keep) = split("attributes") {
            obj.retain(|k, _| k == "id" || k == "schemas" || keep.contains(&k.to_ascii_lowercase()));
        }
        if let Some(drop) = split("excludedAttributes") {
            obj.retain(|k, _| k == "id" || k == "schemas" || !drop.contains(&k.to_ascii_lowercase()));
        }
    }
    v
}

fn positive(query: &HashMap<String, String>, key: &str) -> Result<Option<usize>, Resp> {
    match query.get(key) {
        None => Ok(None),
        Some(s) => s
            .parse::<usize>()
            .map(Some)
            .map_err(|_| scim_error(400, format!("'{key}' must be a non-negative integer, not '{s}'"), None)),
    }
}

/// The attributes a filter can compare: name, value, and whether the comparison is case-exact.
type Attributes = Vec<(&'static str, Option<String>, bool)>;

/// A ListResponse of the resources whose attributes pass the filter, paged by `startIndex` and `count`.
fn list(all: Vec<(Value, Attributes)>, query: &HashMap<String, String>) -> Resp {
    let filter = match query.get("filter").filter(|f| !f.trim().is_empty()) {
        None => None,
        Some(f) => match parse_filter(f) {
            Ok(f) => Some(f),
            Err(r) => return r,
        },
    };
    let mut hits = Vec::new();
    for (v, attributes) in all {
        let keep = match &filter {
            None => true,
            Some(f) => match attributes.iter().find(|(name, _, _)| name.eq_ignore_ascii_case(&f.attribute)) {
                Some((_, value, case_exact)) => f.matches(value.as_deref(), *case_exact),
                None => {
                    return scim_error(
                        400,
                        format!("Invalid filter: unsupported attribute '{}'", f.attribute),
                        Some("invalidFilter"),
                    );
                }
            },
        };
        if keep {
            hits.push(v);
        }
    }
    let (start, count) = match (positive(query, "startIndex"), positive(query, "count")) {
        (Ok(s), Ok(c)) => (s.unwrap_or(1).max(1), c),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let total = hits.len();
    let page: Vec<Value> =
        hits.into_iter().skip(start - 1).take(count.unwrap_or(usize::MAX)).map(|v| project(v, query)).collect();
    let mut body = Map::new();
    body.insert("totalResults".into(), json!(total));
    body.insert("itemsPerPage".into(), json!(page.len()));
    body.insert("startIndex".into(), json!(start));
    body.insert("schemas".into(), json!([LIST_SCHEMA]));
    if !page.is_empty() {
        body.insert("Resources".into(), Value::Array(page));
    }
    Resp::ok(Value::Object(body))
}

/// What a caller who is not a workspace admin sees of a user or service principal in a list: its id and display
/// name only.
fn listed(v: Value, admin: bool) -> Value {
    if admin {
        return v;
    }
    json!({"schemas": v["schemas"], "id": v["id"], "displayName": v["displayName"]})
}

pub fn list_service_principals(d: &Directory, query: &HashMap<String, String>, admin: bool) -> Resp {
    let all = d
        .service_principals
        .iter()
        .map(|s| {
            (
                listed(d.sp_json(s), admin),
                vec![
                    ("applicationId", Some(s.application_id.clone()), false),
                    ("displayName", Some(s.display_name.clone()), false),
                    ("id", Some(s.id.clone()), true),
                ],
            )
        })
        .collect();
    list(all, query)
}

pub fn list_users(d: &Directory, query: &HashMap<String, String>, admin: bool) -> Resp {
    let all = d
        .users
        .iter()
        .map(|u| {
            (
                listed(d.user_json(u), admin),
                vec![
                    ("userName", Some(u.user_name.clone()), false),
                    ("displayName", Some(u.display_name.clone()), false),
                    ("id", Some(u.id.clone()), true),
                    ("emails", Some(u.user_name.clone()), false),
                ],
            )
        })
        .collect();
    list(all, query)
}

pub fn list_groups(d: &Directory, query: &HashMap<String, String>) -> Resp {
    let all = d
        .groups
        .iter()
        .map(|g| {
            (
                d.group_json(g),
                vec![("displayName", Some(g.display_name.clone()), false), ("id", Some(g.id.clone()), true)],
            )
        })
        .collect();
    list(all, query)
}

pub fn get_service_principal(d: &Directory, id: &str, query: &HashMap<String, String>) -> Resp {
    match d.service_principals.iter().find(|s| s.id == id) {
        Some(s) => Resp::ok(project(d.sp_json(s), query)),
        None => scim_error(404, format!("Service Principal with id {id} not found."), None),
    }
}

pub fn get_user(d: &Directory, id: &str, query: &HashMap<String, String>) -> Resp {
    match d.users.iter().find(|u| u.id == id) {
        Some(u) => Resp::ok(project(d.user_json(u), query)),
        None => scim_error(404, format!("User with id {id} not found."), None),
    }
}

pub fn get_group(d: &Directory, id: &str, query: &HashMap<String, String>) -> Resp {
    match d.groups.iter().find(|g| g.id == id) {
        Some(g) => Resp::ok(project(d.group_json(g), query)),
        None => scim_error(404, format!("Group with id {id} not found."), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        let declared = Declared {
            service_principals: vec![("app-1".into(), Some("loader".into()), vec![])],
            users: vec![("ada@example.com".into(), vec!["allow-cluster-create".into()])],
            groups: vec![
                DeclaredGroup {
                    display_name: "etl".into(),
                    members: vec!["app-1".into()],
                    entitlements: Some(vec!["databricks-sql-access".into()]),
                    workspace_local: false,
                },
                DeclaredGroup { display_name: "data".into(), members: vec!["etl".into()], ..Default::default() },
            ],
        };
        Directory::build(&declared, "ada@example.com", &[], &[]).unwrap()
    }

    #[test]
    fn groups_list_direct_memberships_and_parents() {
        let d = dir();
        let names: Vec<&str> = d.direct_groups("app-1").iter().map(|g| g.display_name.as_str()).collect();
        assert_eq!(names, vec!["users", "etl"]);
        let etl = d.group_json(d.group("etl").unwrap());
        assert_eq!(etl["groups"][0]["display"], "data");
        assert_eq!(etl["meta"]["resourceType"], "Group");
        assert_eq!(d.group_json(d.group("users").unwrap())["meta"]["resourceType"], "WorkspaceGroup");
        assert!(d.uc_principal("etl") && !d.uc_principal("users") && !d.uc_principal("nobody"));
    }

    #[test]
    fn filters_take_one_quoted_comparison() {
        let d = dir();
        let q = |f: &str| HashMap::from([("filter".to_string(), f.to_string())]);
        let r = list_service_principals(&d, &q("applicationId eq \"APP-1\""), true);
        assert_eq!(r.body["totalResults"], 1);
        assert_eq!(r.body["Resources"][0]["displayName"], "loader");
        assert_eq!(r.body["Resources"][0]["applicationId"], "app-1");
        let none = list_service_principals(&d, &q("applicationId eq 'other'"), true);
        assert_eq!(none.body["totalResults"], 0);
        assert!(none.body.get("Resources").is_none());
        assert_eq!(list_service_principals(&d, &q("applicationId eq other"), true).status, 400);
        assert_eq!(list_users(&d, &q("nickName eq \"x\""), true).body["scimType"], "invalidFilter");
        // Not an admin: the same filter finds it, but shows only its id and display name.
        let r = list_service_principals(&d, &q("applicationId eq \"APP-1\""), false);
        let found = r.body["Resources"][0].as_object().unwrap();
        let mut keys: Vec<&str> = found.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["displayName", "id", "schemas"]);
        assert!(d.is_admin("ada@example.com") && !d.is_admin("app-1"));
    }
}
