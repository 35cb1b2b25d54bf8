"""The etcd side of the agent: key layout, resource codecs, watcher, status publisher, IPAM claims.

`layout` is the single truth of Calico's etcdv3 key layout; `codecs` decodes and validates the stored
JSON (and patches it for read-modify-write); `syncer` keeps a consumer in step with the store
(list, then watch, re-list after any failure). Everything here talks to etcd only through
`ports.Datastore` (the real one is `adapters.etcd.EtcdDatastore`, the fake `fakes.FakeDatastore`).
"""
