// The function app: Linux, Flex Consumption (FC1), custom handler runtime. It runs as the
// user-assigned identity for everything: host storage, the deployment package, Event Hubs, Key Vault
// references, Application Insights, the lake and Databricks. No setting holds a key; the secret ones
// are Key Vault references.

@description('Name of the function app (its host name is <name>.azurewebsites.net).')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Name of the host storage account (AzureWebJobsStorage).')
param hostStorageAccountName string

@description('URL of the blob container the app package is deployed from.')
param deploymentContainerUrl string

@description('Most instances the app scales out to (Flex Consumption: 40-1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Application Insights connection string: instrumentation key and endpoints, not a credential (local authentication is off, ingestion needs Entra ID).')
param appInsightsConnectionString string

@description('Key Vault URI (without version) of the SEGMENT_DELTA_SOURCES secret.')
param sourcesSecretUri string

@description('Key Vault URI of the Databricks OAuth client id; empty when the managed identity authenticates to Databricks.')
param databricksClientIdSecretUri string

@description('Key Vault URI of the Databricks OAuth client secret; empty when the managed identity authenticates to Databricks.')
param databricksClientSecretSecretUri string

@description('SEGMENT_DELTA_LAKE: abfss://<container>@<account>.dfs.core.windows.net/<prefix>.')
param lakeUri string

@description('Fully qualified Event Hubs namespace, <namespace>.servicebus.windows.net.')
param eventHubsNamespace string

@description('Name of the hub the Event Hub trigger reads.')
param eventHubName string

@description('Consumer group of the Event Hub trigger.')
param eventHubConsumerGroup string

@description('SEGMENT_DELTA_EVENTHUB_SCHEMA: schema of the events read from the hub.')
param eventHubSchema string

@description('DATABRICKS_HOST: workspace URL.')
param databricksHost string

@description('DATABRICKS_CATALOG: Unity Catalog catalog the tables are registered in.')
param databricksCatalog string

@description('DATABRICKS_WAREHOUSE_ID: SQL warehouse for DDL; empty to let the handler choose.')
param databricksWarehouseId string

@description('SEGMENT_DELTA_MAINTENANCE_SCHEDULE: six-field NCRONTAB of the maintenance timer.')
param maintenanceSchedule string

@description('Browser origins allowed to call the Tracking API (analytics.js), e.g. https://www.example.com; empty for none.')
param allowedOrigins array

var baseAppSettings = [
  // Functions host storage, identity-based.
  {
    name: 'AzureWebJobsStorage__accountName'
    value: hostStorageAccountName
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  // Telemetry, Entra ID authenticated.
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsightsConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identityClientId};Authorization=AAD'
  }
  // Event Hub trigger, identity-based.
  {
    name: 'EventHubConnection__fullyQualifiedNamespace'
    value: eventHubsNamespace
  }
  {
    name: 'EventHubConnection__credential'
    value: 'managedidentity'
  }
  {
    name: 'EventHubConnection__clientId'
    value: identityClientId
  }
  {
    name: 'EVENTHUB_NAME'
    value: eventHubName
  }
  {
    name: 'EVENTHUB_CONSUMER_GROUP'
    value: eventHubConsumerGroup
  }
  // The handler.
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
  {
    name: 'SEGMENT_DELTA_LAKE'
    value: lakeUri
  }
  {
    name: 'SEGMENT_DELTA_SOURCES'
    value: '@Microsoft.KeyVault(SecretUri=${sourcesSecretUri})'
  }
  {
    name: 'SEGMENT_DELTA_EVENTHUB_SCHEMA'
    value: eventHubSchema
  }
  {
    name: 'SEGMENT_DELTA_MAINTENANCE_SCHEDULE'
    value: maintenanceSchedule
  }
  {
    name: 'DATABRICKS_HOST'
    value: databricksHost
  }
  {
    name: 'DATABRICKS_CATALOG'
    value: databricksCatalog
  }
]

var warehouseAppSettings = empty(databricksWarehouseId) ? [] : [
  {
    name: 'DATABRICKS_WAREHOUSE_ID'
    value: databricksWarehouseId
  }
]

var databricksOAuthAppSettings = empty(databricksClientSecretSecretUri) ? [] : [
  {
    name: 'DATABRICKS_CLIENT_ID'
    value: '@Microsoft.KeyVault(SecretUri=${databricksClientIdSecretUri})'
  }
  {
    name: 'DATABRICKS_CLIENT_SECRET'
    value: '@Microsoft.KeyVault(SecretUri=${databricksClientSecretSecretUri})'
  }
]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225:Zone redundancy on Flex Consumption keeps at least two always-ready instances per function billed at all times; it is an opt-in (properties.zoneRedundant) rather than a default.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_17:Senders are Segment SDKs in browsers, apps and servers; they authenticate with a write key and cannot present client certificates.
  //checkov:skip=CKV_AZURE_222:The Tracking API is public by design: SDKs on the internet post events to it.
  //checkov:skip=CKV_AZURE_212:Flex Consumption has no fixed instance count: instances are added per demand up to maximumInstanceCount.
  //checkov:skip=CKV_AZURE_213:Flex Consumption does not support the App Service health check (healthCheckPath); there is no instance pool to take an unhealthy instance out of.
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      remoteDebuggingEnabled: false
      cors: {
        allowedOrigins: allowedOrigins
        supportCredentials: false
      }
      appSettings: concat(baseAppSettings, warehouseAppSettings, databricksOAuthAppSettings)
    }
  }
}

resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
output id string = site.id
