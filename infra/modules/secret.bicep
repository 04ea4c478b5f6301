// One secret in the app's Key Vault. The value arrives as a secure parameter and is written through
// Azure Resource Manager; it never appears in an app setting or an output.

@description('Name of the existing vault.')
param vaultName string

@description('Name of the secret.')
param name string

@description('Value of the secret.')
@secure()
param value string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  //checkov:skip=CKV_AZURE_41:The secrets here (write keys, a Databricks OAuth client) are rotated by the operator; an expiry date would stop the handler from starting on that date.
  parent: vault
  name: name
  properties: {
    value: value
    contentType: 'text/plain'
  }
}

@description('URI of the secret without a version, so a Key Vault reference follows new versions.')
output uri string = secret.properties.secretUri
