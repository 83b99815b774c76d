//go:build unix

// This file holds prefork's listeners: parsing -p/-l, binding TCP, unix and UDP
// sockets as raw blocking descriptors, SO_REUSEPORT slot sockets, and adopting
// sockets passed by systemd.
package main

// listenSpec is one listener as the user asked for it.
type listenSpec struct {
	name    string // for LISTEN_FDNAMES; generated when -l has no NAME=
	network string // "tcp", "unix" or "udp"
	addr    string // "host:port", ":port", or the unix socket path
	text    string // the address as written, for SERVER_STARTER_PORT and logs
}

// listener is one bound socket held by prefork: fd is blocking and close-on-exec.
type listener struct {
	spec listenSpec
	fd   int
}
