// Databricks access connector: the identity Unity Catalog uses for the storage credential over the
// lake. Its role on the lake container is granted in lake.bicep.

@description('Name of the access connector.')
param name string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

resource accessConnector 'Microsoft.Databricks/accessConnectors@2024-05-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {}
}

output id string = accessConnector.id
output name string = accessConnector.name
output principalId string = accessConnector.identity.principalId
