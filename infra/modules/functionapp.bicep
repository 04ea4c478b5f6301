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

@description('SEGMENT_DELTA_CORS_ORIGINS and the platform CORS list: browser origins (scheme://host[:port]) allowed to call the Tracking API, or [\'*\'] for any.')
@minLength(1)
param corsOrigins array

@description('SEGMENT_DELTA_PUBLIC_URL: the URL browsers and apps reach the app at, named in the source settings it serves; empty for https://<name>.azurewebsites.net.')
param publicUrl string

@description('SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES: tables at least this large are compacted by OPTIMIZE on the SQL warehouse; 0 leaves the setting out.')
@minValue(0)
param databricksOptimizeBytes int

@description('Further settings of the handler as {name, value} pairs, e.g. [{name: \'SEGMENT_DELTA_FLUSH_INTERVAL_MS\', value: \'500\'}]. Not for a setting this module sets itself, nor for a secret.')
param extraAppSettings array

// Browser CORS. On Flex Consumption the Functions host runs ASP.NET Core's CORS middleware in front of every
// function with the list in siteConfig.cors: it answers each preflight (OPTIONS with Origin and
// Access-Control-Request-Method) itself with 204 and never passes it on, and on other responses it replaces
// Access-Control-Allow-Origin for the origins it lists. An empty list does not switch it off; it only makes
// every preflight fail. So the host's list and the handler's (SEGMENT_DELTA_CORS_ORIGINS) are the same
// origins: the host answers preflights, the handler's headers reach browsers for the rest. '*' stands alone
// in the host's list (next to other origins the host would take it literally). An entry that is neither '*' nor
// scheme://host[:port] stops the deployment, as a refused extra setting does below: the host would never
// match one with a path or a trailing slash, since an Origin header has neither.
var refusedCorsOrigins = filter(corsOrigins, o => (o != '*') && (length(split(o, '/')) != 3))
var corsOriginsWhenAccepted = {
  ok: corsOrigins
}
var corsOriginsChecked = corsOriginsWhenAccepted[empty(refusedCorsOrigins) ? 'ok' : 'corsOrigins: ${refusedCorsOrigins[0]} is not an origin; write scheme://host[:port], without a path or a trailing slash']
var corsAnyOrigin = contains(corsOrigins, '*')
var platformCorsOrigins = corsAnyOrigin ? ['*'] : corsOriginsChecked
var publicUrlValue = empty(publicUrl) ? 'https://${name}.azurewebsites.net' : publicUrl

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
  {
    name: 'SEGMENT_DELTA_CORS_ORIGINS'
    value: corsAnyOrigin ? '*' : join(corsOriginsChecked, ',')
  }
  {
    name: 'SEGMENT_DELTA_PUBLIC_URL'
    value: publicUrlValue
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

var optimizeAppSettings = (databricksOptimizeBytes == 0) ? [] : [
  {
    name: 'SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES'
    value: string(databricksOptimizeBytes)
  }
]

// Names extraAppSettings may not use (upper case): the settings this module sets through parameters of
// their own, the Functions host's CORS variables (the host's CORS comes from siteConfig.cors), secrets (they
// belong in Key Vault), and what Flex Consumption takes from functionAppConfig.
var reservedAppSettingKeys = [
  'AZUREWEBJOBSSTORAGE__ACCOUNTNAME'
  'AZUREWEBJOBSSTORAGE__CREDENTIAL'
  'AZUREWEBJOBSSTORAGE__CLIENTID'
  'APPLICATIONINSIGHTS_CONNECTION_STRING'
  'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
  'EVENTHUBCONNECTION__FULLYQUALIFIEDNAMESPACE'
  'EVENTHUBCONNECTION__CREDENTIAL'
  'EVENTHUBCONNECTION__CLIENTID'
  'EVENTHUB_NAME'
  'EVENTHUB_CONSUMER_GROUP'
  'AZURE_CLIENT_ID'
  'SEGMENT_DELTA_LAKE'
  'SEGMENT_DELTA_SOURCES'
  'SEGMENT_DELTA_EVENTHUB_SCHEMA'
  'SEGMENT_DELTA_MAINTENANCE_SCHEDULE'
  'DATABRICKS_HOST'
  'DATABRICKS_CATALOG'
  'DATABRICKS_WAREHOUSE_ID'
  'DATABRICKS_CLIENT_ID'
  'DATABRICKS_CLIENT_SECRET'
  'SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES'
  'SEGMENT_DELTA_CORS_ORIGINS'
  'SEGMENT_DELTA_PUBLIC_URL'
  'CORS_ALLOWED_ORIGINS'
  'CORS_SUPPORT_CREDENTIALS'
  'DATABRICKS_TOKEN'
  'AZURE_CLIENT_SECRET'
  'AZURE_STORAGE_ACCOUNT_KEY'
  'AZURE_STORAGE_SAS_TOKEN'
  'AZUREWEBJOBSSTORAGE'
  'FUNCTIONS_WORKER_RUNTIME'
  'FUNCTIONS_EXTENSION_VERSION'
  'WEBSITE_RUN_FROM_PACKAGE'
]
var refusedExtraAppSettings = filter(extraAppSettings, s => contains(reservedAppSettingKeys, toUpper(s.name)))
// A refused name stops the deployment: the lookup below then asks for a property that does not exist, and
// ARM's error quotes it ("The language expression property '<this message>' doesn't exist").
var extraAppSettingsWhenAccepted = {
  ok: extraAppSettings
}
var extraAppSettingsChecked = extraAppSettingsWhenAccepted[empty(refusedExtraAppSettings) ? 'ok' : 'extraAppSettings may not set ${refusedExtraAppSettings[0].name}: use the parameter of that setting, or Key Vault for a secret']

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
  //checkov:skip=CKV_AZURE_78:Flex Consumption has no FTP endpoint and rejects siteConfig.ftpsState, a deprecated site property on the plan; basic-auth publishing is off through basicPublishingCredentialsPolicies.
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
      http20Enabled: true
      remoteDebuggingEnabled: false
      cors: {
        allowedOrigins: platformCorsOrigins
        supportCredentials: false
      }
      appSettings: concat(baseAppSettings, warehouseAppSettings, databricksOAuthAppSettings, optimizeAppSettings, extraAppSettingsChecked)
    }
  }
}

// Basic-auth (publishing profile) access to the deployment endpoint is off: Core Tools publishes to a
// Flex Consumption app with an Entra ID token. Flex Consumption has no FTP endpoint, so there is no
// 'ftp' policy to set.
resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
output id string = site.id
