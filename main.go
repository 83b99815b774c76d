// Command prefork binds ports once and runs a command N times, each worker
// inheriting the listening sockets the way systemd passes them.
package main

func main() {}
