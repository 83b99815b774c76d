// This file holds the Linux constants of the Node channel.
package main

// fionbio is the ioctl that sets or clears O_NONBLOCK in one call (FIONBIO in
// <asm-generic/ioctls.h>, the same on amd64 and arm64; package syscall does not
// export it).
const fionbio = 0x5421
