// The lake: an ADLS Gen2 account (hierarchical namespace) and the container the Delta tables live
// in. Access is Entra ID only (no shared keys, no anonymous reads). The function app's identity and
// the Databricks access connector each get Storage Blob Data Contributor on the container, not on
// the account.

@description('Name of the storage account (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Redundancy of the lake account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_GRS'

@description('Container that holds the lake.')
param containerName string

@description('Default action of the storage firewall. Allow: reachable from any network, Entra ID only. Deny: only trusted Azure services and the access connector; the function app then needs virtual network integration and rules or private endpoints.')
@allowed([
  'Allow'
  'Deny'
])
param networkDefaultAction string

@description('Principal id of the function app identity.')
param appPrincipalId string

@description('Resource id of the Databricks access connector.')
param accessConnectorId string

@description('Principal id of the Databricks access connector.')
param accessConnectorPrincipalId string

@description('Days deleted blobs and containers are kept.')
@minValue(1)
@maxValue(365)
param softDeleteDays int = 7

var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35:The function app on Flex Consumption reaches the lake over the public endpoint unless it is given virtual network integration; networkDefaultAction switches to Deny for such deployments. Access needs an Entra ID token in every case (shared keys are off).
  //checkov:skip=CKV_AZURE_59:Public network access is the function app's path to the lake on Flex Consumption without virtual network integration; anonymous and shared-key access are both off.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    isHnsEnabled: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    isLocalUserEnabled: false
    isSftpEnabled: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: networkDefaultAction
      bypass: 'AzureServices'
      ipRules: []
      virtualNetworkRules: []
      resourceAccessRules: [
        {
          tenantId: tenant().tenantId
          resourceId: accessConnectorId
        }
      ]
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
    sasPolicy: {
      sasExpirationPeriod: '0.01:00:00'
      expirationAction: 'Log'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
  }
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}

resource appLakeWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(container.id, appPrincipalId, storageBlobDataContributor)
  scope: container
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'segment-delta function app writes Delta tables in the lake container'
  }
}

resource connectorLakeAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(container.id, accessConnectorPrincipalId, storageBlobDataContributor)
  scope: container
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: accessConnectorPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Unity Catalog storage credential reads and writes the lake container'
  }
}

output accountName string = account.name
output accountId string = account.id
output containerName string = container.name
output containerId string = container.id
output dfsEndpoint string = account.properties.primaryEndpoints.dfs
