// Package testservers starts real servers for the project's tests: a
// versitygw S3 gateway on a private directory, an etcd cluster of several
// members on loopback (Etcd), and a fault-injecting TCP
// proxy to put between a client and such a server. Every server is bound
// to the calling test and stopped by its cleanup, so no process or
// goroutine outlives the test that asked for it.
package testservers
