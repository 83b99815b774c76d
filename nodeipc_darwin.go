// This file holds the macOS constants of the Node channel.
package main

// fionbio is the ioctl that sets or clears O_NONBLOCK in one call (_IOW('f',
// 126, int) in <sys/filio.h>; package syscall does not export it for darwin).
const fionbio = 0x8004667e
