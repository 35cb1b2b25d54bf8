"""Pure calculation: datastore resources in, dataplane messages out."""
