// Parameters of main.bicep. Secrets and per-workspace values come from the environment of the
// shell that runs `az deployment group create`; docs/deploy.md sets them.
using './main.bicep'

param baseName = 'segment-delta'

// The lake: abfss://lake@<account>.dfs.core.windows.net/bronze
param lakeContainerName = 'lake'
param lakePrefix = 'bronze'
param lakeSkuName = 'Standard_GRS'
param lakeNetworkDefaultAction = 'Allow'

// Event Hubs
param eventHubsSkuName = 'Standard'
param eventHubsCapacity = 1
param eventHubName = 'segment-events'
param eventHubPartitionCount = 4
param eventHubMessageRetentionInDays = 1
param eventHubConsumerGroupName = 'segment-delta'
param eventHubSchema = 'segment'

// Function app (Flex Consumption)
param maximumInstanceCount = 100
param instanceMemoryMB = 2048
param maintenanceSchedule = '0 */15 * * * *'
// Browser origins that may call the Tracking API (analytics.js), e.g. ['https://www.example.com'], or ['*'] for
// any; the same list answers browser preflights on the platform (docs/sources.md).
param corsOrigins = ['*']
// The URL browsers and apps reach the Tracking API at, when not https://<app>.azurewebsites.net (a custom domain).
param publicUrl = ''
// SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES: tables of at least this many bytes are compacted by OPTIMIZE on
// the SQL warehouse, e.g. 10737418240 (10 GiB); 0 leaves it to the function.
param databricksOptimizeBytes = 0
// Any other setting of the handler (README, Configuration) as name/value pairs, e.g.
// [{ name: 'SEGMENT_DELTA_FLUSH_INTERVAL_MS', value: '500' }, { name: 'RUST_LOG', value: 'info,segment_delta=debug' }].
// The app settings are exactly what this file and the template say: a setting changed by hand is gone after
// the next deployment.
param extraAppSettings = []

// Write keys: KEY1=schema_one,KEY2=schema_two. Required; stored in Key Vault only.
param segmentDeltaSources = readEnvironmentVariable('SEGMENT_DELTA_SOURCES')

// Databricks
param databricksHost = readEnvironmentVariable('DATABRICKS_HOST')
param databricksCatalog = readEnvironmentVariable('DATABRICKS_CATALOG', 'segment')
param databricksWarehouseId = readEnvironmentVariable('DATABRICKS_WAREHOUSE_ID', '')

// Optional Databricks OAuth client. Unset (the default): the function app's managed identity
// authenticates to Databricks with Entra ID.
param databricksClientId = readEnvironmentVariable('DATABRICKS_CLIENT_ID', '')
param databricksClientSecret = readEnvironmentVariable('DATABRICKS_CLIENT_SECRET', '')

param logRetentionInDays = 30
