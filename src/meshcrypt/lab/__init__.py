"""The lab: an encrypted multi-node cluster on one machine, in network namespaces, with etcd."""
