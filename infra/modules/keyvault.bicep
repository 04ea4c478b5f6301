// Key Vault for the function app's secrets, authorised with Azure RBAC (no access policies), soft
// delete and purge protection on. The write keys (SEGMENT_DELTA_SOURCES) always live here; a
// Databricks OAuth client is stored only when one is given (the default is the managed identity).
// The function app identity gets Key Vault Secrets User and reads them through Key Vault references.

@description('Name of the vault (3-24 characters).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Days a deleted vault or secret can be recovered.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Principal id of the function app identity.')
param appPrincipalId string

@description('Value of SEGMENT_DELTA_SOURCES: KEY1=schema_one,KEY2=schema_two.')
@secure()
param segmentDeltaSources string

@description('Databricks service principal (OAuth M2M) application id; empty to authenticate with the managed identity.')
@secure()
param databricksClientId string

@description('Databricks service principal OAuth secret; empty to authenticate with the managed identity.')
@secure()
param databricksClientSecret string

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var useDatabricksOAuth = !(empty(databricksClientId) || empty(databricksClientSecret))

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  //checkov:skip=CKV_AZURE_109:Key Vault references are resolved from the function app's outbound network, which on Flex Consumption without virtual network integration is public; every read needs the identity's Entra ID token and the Key Vault Secrets User role.
  //checkov:skip=CKV_AZURE_189:The function app resolves its Key Vault references over the public endpoint on Flex Consumption without virtual network integration; reads need the identity's Entra ID token and the Key Vault Secrets User role.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

module sourcesSecret 'secret.bicep' = {
  name: 'secret-segment-delta-sources'
  params: {
    vaultName: vault.name
    name: 'segment-delta-sources'
    value: segmentDeltaSources
  }
}

module databricksClientIdSecret 'secret.bicep' = if (useDatabricksOAuth) {
  name: 'secret-databricks-client-id'
  params: {
    vaultName: vault.name
    name: 'databricks-client-id'
    value: databricksClientId
  }
}

module databricksClientSecretSecret 'secret.bicep' = if (useDatabricksOAuth) {
  name: 'secret-databricks-client-secret'
  params: {
    vaultName: vault.name
    name: 'databricks-client-secret'
    value: databricksClientSecret
  }
}

resource appSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'segment-delta function app resolves its Key Vault references'
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
output sourcesSecretUri string = sourcesSecret.outputs.uri
output databricksClientIdSecretUri string = useDatabricksOAuth ? databricksClientIdSecret.outputs.uri : ''
output databricksClientSecretSecretUri string = useDatabricksOAuth ? databricksClientSecretSecret.outputs.uri : ''
