//! How the lake is reached on Azure: storage options for the `deltalake` Azure store, chosen from the environment
//! in the order a Function App needs them.

use std::collections::HashMap;
use std::fmt;

use super::{ConfigError, Lake};

/// Storage options (some secret) and a printable name of the credential kind in use.
#[derive(Clone, Default)]
pub struct Storage {
    pub options: HashMap<String, String>,
    pub credential: String,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.options.keys().collect();
        keys.sort();
        f.debug_struct("Storage").field("credential", &self.credential).field("option_keys", &keys).finish()
    }
}

fn invalid(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { name, message: message.into() }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Picks the credential: `SEGMENT_DELTA_STORAGE_CREDENTIAL` when set, otherwise the first that the environment
/// offers of managed identity (the Functions/App Service endpoint), workload identity, client secret, the Azure
/// CLI, then the instance metadata endpoint. Account keys and SAS tokens are used only when named explicitly.
pub fn from_lookup(lake: &Lake, get: &impl Fn(&str) -> Option<String>) -> Result<Storage, ConfigError> {
    const NAME: &str = "SEGMENT_DELTA_STORAGE_CREDENTIAL";
    let emulator = match get("SEGMENT_DELTA_STORAGE_EMULATOR").as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(invalid("SEGMENT_DELTA_STORAGE_EMULATOR", format!("{other:?}: expected true or false")));
        }
    };
    if matches!(lake, Lake::Local(_)) {
        return Ok(Storage { options: HashMap::new(), credential: "local directory".into() });
    }
    let mut o = HashMap::new();
    let set = |o: &mut HashMap<String, String>, k: &str, v: String| {
        o.insert(k.to_string(), v);
    };
    let client_id = get("AZURE_CLIENT_ID").filter(|s| !s.is_empty());
    let explicit = get(NAME).map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty());
    let kind = match explicit.as_deref() {
        Some(k) => k.to_string(),
        None if emulator => "emulator".into(),
        None if get("IDENTITY_ENDPOINT").is_some() => "managed-identity".into(),
        None if get("AZURE_FEDERATED_TOKEN_FILE").is_some() => "workload-identity".into(),
        None if get("AZURE_CLIENT_SECRET").is_some() => "client-secret".into(),
        None if on_path("az") => "azure-cli".into(),
        None => "managed-identity".into(),
    };
    let need = |name: &'static str| {
        get(name).filter(|s| !s.is_empty()).ok_or_else(|| invalid(name, format!("is required when {NAME} is {kind}")))
    };
    let credential = match kind.as_str() {
        "emulator" => {
            set(&mut o, "use_emulator", "true".into());
            set(&mut o, "allow_http", "true".into());
            "storage emulator (Azurite)".to_string()
        }
        "managed-identity" => {
            // The Functions host exposes its token endpoint here; the Azure store only reads it when passed.
            if let Some(endpoint) = get("IDENTITY_ENDPOINT").or_else(|| get("MSI_ENDPOINT")) {
                set(&mut o, "azure_msi_endpoint", endpoint);
            }
            match &client_id {
                Some(id) => {
                    set(&mut o, "azure_client_id", id.clone());
                    format!("managed identity (user-assigned, client id {id})")
                }
                None => "managed identity (system-assigned)".to_string(),
            }
        }
        "workload-identity" => {
            set(&mut o, "azure_federated_token_file", need("AZURE_FEDERATED_TOKEN_FILE")?);
            set(&mut o, "azure_client_id", need("AZURE_CLIENT_ID")?);
            set(&mut o, "azure_tenant_id", need("AZURE_TENANT_ID")?);
            "workload identity".to_string()
        }
        "client-secret" => {
            set(&mut o, "azure_client_id", need("AZURE_CLIENT_ID")?);
            set(&mut o, "azure_tenant_id", need("AZURE_TENANT_ID")?);
            set(&mut o, "azure_client_secret", need("AZURE_CLIENT_SECRET")?);
            "service principal client secret".to_string()
        }
        "azure-cli" => {
            set(&mut o, "azure_use_azure_cli", "true".into());
            "Azure CLI login".to_string()
        }
        "account-key" => {
            set(&mut o, "azure_storage_account_key", need("AZURE_STORAGE_ACCOUNT_KEY")?);
            "storage account key".to_string()
        }
        "sas" => {
            set(&mut o, "azure_storage_sas_key", need("AZURE_STORAGE_SAS_TOKEN")?);
            "SAS token".to_string()
        }
        other => {
            return Err(invalid(
                NAME,
                format!(
                    "{other:?}: expected managed-identity, workload-identity, client-secret, azure-cli, account-key, sas or emulator"
                ),
            ));
        }
    };
    if emulator && kind != "emulator" {
        set(&mut o, "use_emulator", "true".into());
        set(&mut o, "allow_http", "true".into());
    }
    // Where the account is, when the lake URI does not say it (`az://container/...`), or at another endpoint (a
    // private endpoint, a sovereign cloud, a local emulator over HTTPS).
    if let Some(account) = get("AZURE_STORAGE_ACCOUNT_NAME").filter(|s| !s.is_empty()) {
        set(&mut o, "azure_storage_account_name", account);
    }
    if let Some(endpoint) = get("SEGMENT_DELTA_STORAGE_ENDPOINT").filter(|s| !s.trim().is_empty()) {
        if endpoint.trim().starts_with("http://") {
            set(&mut o, "allow_http", "true".into());
        }
        set(&mut o, "azure_storage_endpoint", endpoint.trim().to_string());
    }
    if let Some(authority) = get("AZURE_AUTHORITY_HOST").filter(|s| !s.is_empty())
        && matches!(kind.as_str(), "client-secret" | "workload-identity")
    {
        set(&mut o, "azure_authority_host", authority);
    }
    Ok(Storage { options: o, credential })
}

/// The store for `url` when its scheme is Azure's (`abfs`, `abfss`, `az`, `adl`, `azure`): [`azure_store`].
pub fn azure_backend(
    url: &url::Url,
    storage_options: &HashMap<String, String>,
) -> Result<Option<std::sync::Arc<dyn object_store::ObjectStore>>, deltalake::DeltaTableError> {
    match url.scheme() {
        "abfs" | "abfss" | "az" | "adl" | "azure" => azure_store(url, storage_options).map(Some),
        _ => Ok(None),
    }
}

/// The Azure store of the container `url` is in, built from exactly the settings' options: the credential the
/// settings chose and nothing else. (Given options alone, the `deltalake` Azure store fills in credentials from any
/// `AZURE_*` variable of the environment, so a stray account key or client secret could be used while the start-up
/// line names the managed identity.)
pub fn azure_store(
    url: &url::Url,
    storage_options: &HashMap<String, String>,
) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, deltalake::DeltaTableError> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    use std::str::FromStr;
    let mut builder = MicrosoftAzureBuilder::new().with_url(url.as_str());
    for (key, value) in storage_options {
        let key = AzureConfigKey::from_str(key)
            .map_err(|e| deltalake::DeltaTableError::Generic(format!("storage option {key}: {e}")))?;
        builder = builder.with_config(key, value);
    }
    Ok(std::sync::Arc::new(builder.build()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(vars: &[(&str, &str)]) -> Result<Storage, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lake = Lake::parse("abfss://lake@acct.dfs.core.windows.net/bronze").unwrap();
        from_lookup(&lake, &|k| map.get(k).cloned())
    }

    #[test]
    fn functions_managed_identity_passes_the_endpoint_through() {
        let s = storage(&[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token"),
            ("IDENTITY_HEADER", "h"),
            ("AZURE_CLIENT_ID", "cid"),
        ])
        .unwrap();
        assert_eq!(s.options["azure_msi_endpoint"], "http://127.0.0.1:41741/msi/token");
        assert_eq!(s.options["azure_client_id"], "cid");
        assert_eq!(s.credential, "managed identity (user-assigned, client id cid)");
    }

    #[test]
    fn order_and_explicit_choices() {
        let s =
            storage(&[("AZURE_CLIENT_ID", "c"), ("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_SECRET", "SECRET")]).unwrap();
        assert_eq!(s.credential, "service principal client secret");
        assert!(!format!("{s:?}").contains("SECRET"), "secrets never reach Debug output");
        let s = storage(&[
            ("AZURE_FEDERATED_TOKEN_FILE", "/f"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_SECRET", "x"),
        ])
        .unwrap();
        assert_eq!(s.credential, "workload identity");
        let e = storage(&[("SEGMENT_DELTA_STORAGE_CREDENTIAL", "account-key")]).unwrap_err().to_string();
        assert!(e.starts_with("AZURE_STORAGE_ACCOUNT_KEY: is required"), "{e}");
        // The chosen credential is the only one: a key lying around in the environment is not passed on.
        let s = storage(&[
            ("SEGMENT_DELTA_STORAGE_CREDENTIAL", "managed-identity"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5"),
            ("AZURE_CLIENT_SECRET", "s"),
        ])
        .unwrap();
        assert!(s.options.keys().all(|k| !k.contains("key") && !k.contains("secret")), "{:?}", s.options.keys());
        let s = storage(&[("SEGMENT_DELTA_STORAGE_EMULATOR", "true")]).unwrap();
        assert_eq!(s.options["use_emulator"], "true");
        assert!(storage(&[("SEGMENT_DELTA_STORAGE_CREDENTIAL", "magic")]).is_err());
    }
}
