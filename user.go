//go:build linux || darwin

// This file resolves --user USER[:GROUP] and keeps prefork's own descriptors
// out of workers.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// lookupUser returns the shim's credential string "uid:gid:groups" for --user,
// with the user's supplementary groups, and the uid and gid.
func lookupUser(spec string) (cred string, uid, gid int, err error) {
	name, group, hasGroup := strings.Cut(spec, ":")
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			n, nerr := strconv.Atoi(name)
			if nerr != nil || n < 0 || n >= 1<<31 {
				return "", 0, 0, fmt.Errorf("no such user")
			}
			// A uid with no account, as container images use them (docker
			// --user, systemd's User=): its own number as group, no others.
			u = &user.User{Uid: name, Gid: name}
		}
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	if hasGroup {
		g, err := user.LookupGroup(group)
		if err != nil {
			if g, err = user.LookupGroupId(group); err != nil {
				return "", 0, 0, fmt.Errorf("no such group %q", group)
			}
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	// With USER:GROUP, GROUP replaces the user's login group, which GroupIds
	// always lists, as runuser -u USER -g GROUP does; the other groups stay.
	groups := []string{strconv.Itoa(gid)}
	if ids, err := u.GroupIds(); err == nil && u.Username != "" {
		for _, id := range ids {
			if id != strconv.Itoa(gid) && !(hasGroup && id == u.Gid) {
				groups = append(groups, id)
			}
		}
	}
	if euid := os.Geteuid(); euid != 0 && euid != uid {
		return "", 0, 0, errors.New("switching users needs root")
	}
	return fmt.Sprintf("%d:%d:%s", uid, gid, strings.Join(groups, ",")), uid, gid, nil
}

// setCloseOnExecAll marks every descriptor above 2 close-on-exec, so that what
// prefork inherited from its parent never reaches a worker; workers get exactly
// the descriptors prefork passes on purpose.
func setCloseOnExecAll() {
	ents, err := os.ReadDir("/dev/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
