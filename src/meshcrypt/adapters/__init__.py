"""The only code that talks to the kernel, wireguard-go, etcd, sockets and subprocesses."""
