// Event Hubs: the namespace (Entra ID only: local SAS auth disabled), the hub the handler's Event
// Hub trigger reads, and its consumer group. The function app identity may only receive, and only
// from this hub.

@description('Name of the namespace (6-50 characters).')
@minLength(6)
@maxLength(50)
param namespaceName string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Namespace tier. Basic has no consumer groups besides $Default, so it is not offered.')
@allowed([
  'Standard'
  'Premium'
])
param namespaceSkuName string

@description('Standard: throughput units, 1-40. Premium: processing units, 1, 2, 4, 8 or 16.')
@minValue(1)
@maxValue(40)
param namespaceCapacity int

@description('Name of the hub.')
param hubName string

@description('Partitions of the hub: the most function instances that read it at once. Fixed once the hub exists on Standard.')
@minValue(1)
@maxValue(32)
param partitionCount int

@description('Days events stay in the hub: at most 7 on Standard, 90 on Premium.')
@minValue(1)
@maxValue(90)
param messageRetentionInDays int

@description('Consumer group of the handler.')
param consumerGroupName string

@description('Principal id of the function app identity.')
param appPrincipalId string

var eventHubsDataReceiver = 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'

// What Event Hubs accepts per tier: Premium sells 1, 2, 4, 8 or 16 processing units; Standard keeps events
// at most 7 days (Premium 90, the parameter's maximum). Another value stops the deployment before the
// namespace is touched: the lookups below then ask for a property that does not exist, and ARM's error names
// the value and the allowed ones ("The language expression property '3' doesn't exist, available properties
// are '1, 2, 4, 8, 16'").
var premiumProcessingUnits = {
  '1': 1
  '2': 2
  '4': 4
  '8': 8
  '16': 16
}
var standardRetentionInDays = {
  '1': 1
  '2': 2
  '3': 3
  '4': 4
  '5': 5
  '6': 6
  '7': 7
}
var capacity = (namespaceSkuName == 'Premium') ? premiumProcessingUnits[string(namespaceCapacity)] : namespaceCapacity
var retentionInDays = (namespaceSkuName == 'Standard') ? standardRetentionInDays[string(messageRetentionInDays)] : messageRetentionInDays

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: namespaceSkuName
    tier: namespaceSkuName
    capacity: capacity
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: hubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: retentionInDays
  }
}

resource consumerGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: hub
  name: consumerGroupName
  properties: {
    userMetadata: 'segment-delta Event Hub trigger'
  }
}

resource appHubReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, appPrincipalId, eventHubsDataReceiver)
  scope: hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataReceiver)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'segment-delta Event Hub trigger reads the hub'
  }
}

output namespaceName string = namespace.name
output fullyQualifiedNamespace string = replace(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')
output hubName string = hub.name
output consumerGroupName string = consumerGroup.name
