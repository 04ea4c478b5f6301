//! Databricks settings: the workspace, the catalog, the warehouse, and how tokens are obtained (a personal access
//! token, OAuth machine-to-machine, or Microsoft Entra for a managed identity, workload identity or service
//! principal).

use std::fmt;
use std::time::Duration;

use super::{ConfigError, Secret};

/// Databricks settings; absent when `DATABRICKS_HOST` is unset (the Delta log alone is then the catalog).
#[derive(Debug, Clone)]
pub struct DatabricksConfig {
    pub host: String,
    pub auth: Auth,
    pub catalog: String,
    pub warehouse_id: Option<String>,
    /// How long one statement may take, including a warehouse start.
    pub statement_timeout: Duration,
    /// How long 429/503 answers and network errors are retried before a write fails.
    pub retry_budget: Duration,
}

impl DatabricksConfig {
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Option<DatabricksConfig>, ConfigError> {
        let val = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let Some(host) = val("DATABRICKS_HOST") else { return Ok(None) };
        let host = if host.contains("://") { host } else { format!("https://{host}") };
        let catalog = val("DATABRICKS_CATALOG").ok_or(ConfigError::Invalid {
            name: "DATABRICKS_CATALOG",
            message: "is required when DATABRICKS_HOST is set: the Unity Catalog catalog the tables are registered in"
                .into(),
        })?;
        let secs = |name: &'static str, default: u64| match val(name) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => super::units::duration(&v, Duration::from_secs(1)).ok_or_else(|| ConfigError::Invalid {
                name,
                message: format!("{v:?} is not a duration (a number of seconds, or one with ms, s, m, h)"),
            }),
        };
        Ok(Some(DatabricksConfig {
            host: host.trim_end_matches('/').to_string(),
            auth: Auth::from_lookup(get)?,
            catalog,
            warehouse_id: val("DATABRICKS_WAREHOUSE_ID"),
            statement_timeout: secs("SEGMENT_DELTA_STATEMENT_TIMEOUT_SECS", 300)?,
            retry_budget: secs("SEGMENT_DELTA_DATABRICKS_RETRY_SECS", 60)?,
        }))
    }
}

/// How tokens are obtained.
#[derive(Clone)]
pub enum Auth {
    Pat(Secret),
    OAuthM2m {
        client_id: String,
        client_secret: Secret,
    },
    /// Managed identity: the App Service / Functions endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), or the
    /// instance metadata endpoint when that is absent.
    AzureMsi {
        endpoint: Option<String>,
        header: Option<Secret>,
        client_id: Option<String>,
    },
    AzureClientSecret {
        tenant_id: String,
        client_id: String,
        client_secret: Secret,
        authority: String,
    },
    AzureWorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: String,
        authority: String,
    },
    /// The Azure CLI's signed-in account (`az login`): for running `setup` or `check` on a developer's machine.
    /// `program` is the CLI to run (`az`); `tenant_id` picks the tenant when the account spans several.
    AzureCli {
        program: String,
        tenant_id: Option<String>,
    },
}

/// Whom `azure-cli` credentials belong to.
pub const AZURE_CLI_ACCOUNT: &str = "the account signed in to the Azure CLI";

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

impl Auth {
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Pat(_) => "personal access token",
            Auth::OAuthM2m { .. } => "OAuth machine-to-machine",
            Auth::AzureMsi { .. } => "Microsoft Entra managed identity",
            Auth::AzureClientSecret { .. } => "Microsoft Entra service principal (client secret)",
            Auth::AzureWorkloadIdentity { .. } => "Microsoft Entra workload identity",
            Auth::AzureCli { .. } => "Microsoft Entra through the Azure CLI (az login)",
        }
    }

    /// Whom the credentials belong to when they are a person's more often than not: a personal access token, or
    /// the account signed in to the Azure CLI.
    pub fn personal_owner(&self) -> Option<&'static str> {
        match self {
            Auth::Pat(_) => Some("the owner of DATABRICKS_TOKEN"),
            Auth::AzureCli { .. } => Some(AZURE_CLI_ACCOUNT),
            _ => None,
        }
    }

    /// Chooses the credential from `DATABRICKS_AUTH_TYPE`, else from what is set: a token, then OAuth client
    /// credentials, then Entra (client secret, workload identity, managed identity).
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Auth, ConfigError> {
        let val = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let need = |k: &'static str, kind: &str| {
            val(k).ok_or_else(|| ConfigError::Invalid {
                name: k,
                message: format!("is required for Databricks auth {kind}"),
            })
        };
        let authority = val("AZURE_AUTHORITY_HOST")
            .unwrap_or_else(|| "https://login.microsoftonline.com".into())
            .trim_end_matches('/')
            .to_string();
        let kind = match val("DATABRICKS_AUTH_TYPE") {
            Some(k) => k,
            None if val("DATABRICKS_TOKEN").is_some() => "pat".into(),
            None if val("DATABRICKS_CLIENT_ID").is_some() => "oauth-m2m".into(),
            None if val("AZURE_CLIENT_SECRET").is_some() => "azure-client-secret".into(),
            None if val("AZURE_FEDERATED_TOKEN_FILE").is_some() => "azure-workload-identity".into(),
            None => "azure-msi".into(),
        };
        Ok(match kind.as_str() {
            "pat" => Auth::Pat(Secret::new(need("DATABRICKS_TOKEN", "pat")?)),
            "oauth-m2m" => Auth::OAuthM2m {
                client_id: need("DATABRICKS_CLIENT_ID", "oauth-m2m")?,
                client_secret: Secret::new(need("DATABRICKS_CLIENT_SECRET", "oauth-m2m")?),
            },
            "azure-client-secret" => Auth::AzureClientSecret {
                tenant_id: need("AZURE_TENANT_ID", "azure-client-secret")?,
                client_id: need("AZURE_CLIENT_ID", "azure-client-secret")?,
                client_secret: Secret::new(need("AZURE_CLIENT_SECRET", "azure-client-secret")?),
                authority,
            },
            "azure-workload-identity" => Auth::AzureWorkloadIdentity {
                tenant_id: need("AZURE_TENANT_ID", "azure-workload-identity")?,
                client_id: need("AZURE_CLIENT_ID", "azure-workload-identity")?,
                token_file: need("AZURE_FEDERATED_TOKEN_FILE", "azure-workload-identity")?,
                authority,
            },
            "azure-cli" => Auth::AzureCli { program: "az".into(), tenant_id: val("AZURE_TENANT_ID") },
            "azure-msi" => Auth::AzureMsi {
                endpoint: val("IDENTITY_ENDPOINT"),
                header: val("IDENTITY_HEADER").map(Secret::new),
                client_id: val("AZURE_CLIENT_ID"),
            },
            other => {
                return Err(ConfigError::Invalid {
                    name: "DATABRICKS_AUTH_TYPE",
                    message: format!(
                        "{other:?}: expected pat, oauth-m2m, azure-msi, azure-client-secret, azure-workload-identity or azure-cli"
                    ),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn auth(vars: &[(&str, &str)]) -> Result<Auth, ConfigError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Auth::from_lookup(&|k| m.get(k).cloned())
    }

    #[test]
    fn picks_the_credential_like_the_databricks_sdks() {
        assert_eq!(auth(&[("DATABRICKS_TOKEN", "dapi1")]).unwrap().kind(), "personal access token");
        let a = auth(&[("DATABRICKS_CLIENT_ID", "c"), ("DATABRICKS_CLIENT_SECRET", "s")]).unwrap();
        assert_eq!(a.kind(), "OAuth machine-to-machine");
        let a = auth(&[("AZURE_CLIENT_ID", "c"), ("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_SECRET", "SECRET")]).unwrap();
        assert_eq!(a.kind(), "Microsoft Entra service principal (client secret)");
        assert!(!format!("{a:?}").contains("SECRET"));
        assert_eq!(
            auth(&[("IDENTITY_ENDPOINT", "http://x"), ("IDENTITY_HEADER", "h")]).unwrap().kind(),
            "Microsoft Entra managed identity"
        );
        let e = auth(&[("DATABRICKS_AUTH_TYPE", "oauth-m2m")]).unwrap_err().to_string();
        assert!(e.starts_with("DATABRICKS_CLIENT_ID: is required"), "{e}");
        assert!(auth(&[("DATABRICKS_AUTH_TYPE", "magic")]).is_err());
        // The Azure CLI only when asked for: a developer's `az login` never stands in for the function's identity.
        match auth(&[("DATABRICKS_AUTH_TYPE", "azure-cli"), ("AZURE_TENANT_ID", "t1"), ("DATABRICKS_TOKEN", "x")]) {
            Ok(Auth::AzureCli { program, tenant_id }) => {
                assert_eq!((program.as_str(), tenant_id.as_deref()), ("az", Some("t1")));
            }
            other => panic!("{other:?}"),
        }
    }
}
