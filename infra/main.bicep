// segment-delta on Azure: the function app (Flex Consumption, custom handler) and everything it
// needs, identity-based end to end.
//
//   az deployment group create -g <resource group> -f infra/main.bicep -p infra/main.bicepparam
//
// The deploying principal needs to create role assignments in the resource group (Owner, User
// Access Administrator or Role Based Access Control Administrator there).

targetScope = 'resourceGroup'

@description('Azure region of every resource; it must offer the Flex Consumption plan.')
param location string = resourceGroup().location

@description('Prefix of resource names (lowercase letters, digits and hyphens).')
@minLength(2)
@maxLength(20)
param baseName string = 'segment-delta'

@description('Tags for every resource.')
param tags object = {}

// The lake.

@description('Container that holds the lake.')
@minLength(3)
@maxLength(63)
param lakeContainerName string = 'lake'

@description('Folder inside the container under which the handler writes <schema>/<table>; empty for the container root.')
param lakePrefix string = 'bronze'

@description('Redundancy of the lake storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param lakeSkuName string = 'Standard_GRS'

@description('Default action of the lake storage firewall; see modules/lake.bicep.')
@allowed([
  'Allow'
  'Deny'
])
param lakeNetworkDefaultAction string = 'Allow'

// Event Hubs.

@description('Event Hubs namespace tier.')
@allowed([
  'Standard'
  'Premium'
])
param eventHubsSkuName string = 'Standard'

@description('Standard: throughput units, 1-40. Premium: processing units, 1, 2, 4, 8 or 16.')
@minValue(1)
@maxValue(40)
param eventHubsCapacity int = 1

@description('Name of the hub the handler reads.')
param eventHubName string = 'segment-events'

@description('Partitions of the hub.')
@minValue(1)
@maxValue(32)
param eventHubPartitionCount int = 4

@description('Days events stay in the hub: at most 7 on Standard, 90 on Premium.')
@minValue(1)
@maxValue(90)
param eventHubMessageRetentionInDays int = 1

@description('Consumer group of the handler.')
param eventHubConsumerGroupName string = 'segment-delta'

@description('SEGMENT_DELTA_EVENTHUB_SCHEMA: schema of the events read from the hub.')
param eventHubSchema string = 'segment'

// The function app.

@description('Most instances the function app scales out to (40-1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory of each function app instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('SEGMENT_DELTA_MAINTENANCE_SCHEDULE: six-field NCRONTAB of the maintenance timer.')
param maintenanceSchedule string = '0 */15 * * * *'

@description('SEGMENT_DELTA_CORS_ORIGINS: browser origins (scheme://host[:port]) allowed to call the Tracking API, e.g. [\'https://www.example.com\'], or [\'*\'] (the default) for any. The same list goes to the function app\'s platform CORS, which answers browser preflights on Flex Consumption (docs/sources.md).')
@minLength(1)
param corsOrigins array = ['*']

@description('SEGMENT_DELTA_PUBLIC_URL: the URL browsers and apps reach the Tracking API at, e.g. a custom domain; empty (the default) for https://<function app>.azurewebsites.net.')
param publicUrl string = ''

@description('SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES: with Unity Catalog kept, tables of at least this many bytes are compacted by OPTIMIZE on the SQL warehouse; 0 (the default) leaves the setting out.')
@minValue(0)
param databricksOptimizeBytes int = 0

@description('Any other setting of the handler (README, Configuration) as {name, value} pairs, e.g. [{name: \'SEGMENT_DELTA_FLUSH_INTERVAL_MS\', value: \'500\'}]. Settings the template sets through their own parameters, and secrets, are refused.')
param extraAppSettings array = []

@description('SEGMENT_DELTA_SOURCES: KEY1=schema_one,KEY2=schema_two. Stored in Key Vault only.')
@secure()
param segmentDeltaSources string

// Databricks.

@description('DATABRICKS_HOST: workspace URL, https://adb-<workspace id>.<n>.azuredatabricks.net.')
param databricksHost string

@description('DATABRICKS_CATALOG: Unity Catalog catalog the tables are registered in.')
param databricksCatalog string = 'segment'

@description('DATABRICKS_WAREHOUSE_ID: SQL warehouse for DDL; empty to leave the setting out.')
param databricksWarehouseId string = ''

@description('Databricks OAuth (M2M) client id. Leave empty (the default) to authenticate with the managed identity; set together with databricksClientSecret.')
@secure()
param databricksClientId string = ''

@description('Databricks OAuth (M2M) client secret. Leave empty (the default) to authenticate with the managed identity.')
@secure()
param databricksClientSecret string = ''

// Monitoring.

@description('Days logs are kept in Log Analytics.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

var token = uniqueString(subscription().id, resourceGroup().id, baseName)
var names = {
  identity: 'id-${baseName}-${token}'
  lake: 'stlake${token}'
  hostStorage: 'stfunc${token}'
  keyVault: 'kv-${token}'
  eventHubs: 'evhns-${baseName}-${token}'
  workspace: 'log-${baseName}-${token}'
  appInsights: 'appi-${baseName}-${token}'
  accessConnector: 'dbac-${baseName}-${token}'
  plan: 'plan-${baseName}-${token}'
  functionApp: '${baseName}-${token}'
}
var deploymentContainerName = 'app-package'

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module accessConnector 'modules/accessconnector.bicep' = {
  name: 'access-connector'
  params: {
    name: names.accessConnector
    location: location
    tags: tags
  }
}

module lake 'modules/lake.bicep' = {
  name: 'lake'
  params: {
    name: names.lake
    location: location
    tags: tags
    skuName: lakeSkuName
    containerName: lakeContainerName
    networkDefaultAction: lakeNetworkDefaultAction
    appPrincipalId: identity.outputs.principalId
    accessConnectorId: accessConnector.outputs.id
    accessConnectorPrincipalId: accessConnector.outputs.principalId
  }
}

module hostStorage 'modules/hoststorage.bicep' = {
  name: 'host-storage'
  params: {
    name: names.hostStorage
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    appPrincipalId: identity.outputs.principalId
  }
}

module eventHubs 'modules/eventhubs.bicep' = {
  name: 'event-hubs'
  params: {
    namespaceName: names.eventHubs
    location: location
    tags: tags
    namespaceSkuName: eventHubsSkuName
    namespaceCapacity: eventHubsCapacity
    hubName: eventHubName
    partitionCount: eventHubPartitionCount
    messageRetentionInDays: eventHubMessageRetentionInDays
    consumerGroupName: eventHubConsumerGroupName
    appPrincipalId: identity.outputs.principalId
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    workspaceName: names.workspace
    appInsightsName: names.appInsights
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
    appPrincipalId: identity.outputs.principalId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'key-vault'
  params: {
    name: names.keyVault
    location: location
    tags: tags
    appPrincipalId: identity.outputs.principalId
    segmentDeltaSources: segmentDeltaSources
    databricksClientId: databricksClientId
    databricksClientSecret: databricksClientSecret
  }
}

var lakeUri = 'abfss://${lakeContainerName}@${lake.outputs.accountName}.dfs.${environment().suffixes.storage}/${lakePrefix}'

module functionApp 'modules/functionapp.bicep' = {
  name: 'function-app'
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    hostStorageAccountName: hostStorage.outputs.accountName
    deploymentContainerUrl: hostStorage.outputs.deploymentContainerUrl
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    appInsightsConnectionString: monitoring.outputs.connectionString
    sourcesSecretUri: keyVault.outputs.sourcesSecretUri
    databricksClientIdSecretUri: keyVault.outputs.databricksClientIdSecretUri
    databricksClientSecretSecretUri: keyVault.outputs.databricksClientSecretSecretUri
    lakeUri: lakeUri
    eventHubsNamespace: eventHubs.outputs.fullyQualifiedNamespace
    eventHubName: eventHubs.outputs.hubName
    eventHubConsumerGroup: eventHubs.outputs.consumerGroupName
    eventHubSchema: eventHubSchema
    databricksHost: databricksHost
    databricksCatalog: databricksCatalog
    databricksWarehouseId: databricksWarehouseId
    maintenanceSchedule: maintenanceSchedule
    corsOrigins: corsOrigins
    publicUrl: publicUrl
    databricksOptimizeBytes: databricksOptimizeBytes
    extraAppSettings: extraAppSettings
  }
}

@description('Name of the function app: func azure functionapp publish <this>.')
output functionAppName string = functionApp.outputs.name

@description('Base URL of the Tracking API.')
output functionAppUrl string = 'https://${functionApp.outputs.defaultHostName}'

@description('Client (application) id of the function app identity: the Databricks service principal to add.')
output identityClientId string = identity.outputs.clientId

@description('Object (principal) id of the function app identity.')
output identityPrincipalId string = identity.outputs.principalId

@description('SEGMENT_DELTA_LAKE: the lake root.')
output lakeUri string = lakeUri

@description('Name of the lake storage account.')
output lakeStorageAccountName string = lake.outputs.accountName

@description('Resource id of the Databricks access connector, for the Unity Catalog storage credential.')
output accessConnectorId string = accessConnector.outputs.id

@description('Fully qualified Event Hubs namespace.')
output eventHubsNamespaceFqdn string = eventHubs.outputs.fullyQualifiedNamespace

@description('Name of the hub the handler reads.')
output eventHubName string = eventHubs.outputs.hubName

@description('Name of the Key Vault holding the app secrets.')
output keyVaultName string = keyVault.outputs.name
