// Package vaultproc runs a real Vault on this machine for the end-to-end tests, the
// demo and the benchmark: it builds a plugin and takes its SHA-256, starts a Vault dev
// server on loopback with a plugin directory, waits until it serves, registers and
// mounts plugins by SHA-256 and version as an operator would, and stops the server and
// every plugin process it started. Each child runs in a process group of its own, so
// that stopping it reaches its plugins, and (on Linux) dies with its parent, so that
// no Vault outlives a crashed test run.
//
// The 3-node Raft cluster is scripts/cluster.sh's: the tests drive it command by
// command, as a person would, and its state lives in files between the commands.
package vaultproc
