"""The etcd key layout, resource codecs, watcher, status publisher and IPAM claims."""
