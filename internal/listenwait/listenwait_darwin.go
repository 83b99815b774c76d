// This file is the macOS side of listenwait_linux.go: macOS has no /proc, and
// what a process is blocked in cannot be read with the standard library, so
// nothing is ever seen waiting.
package listenwait

// Supported says whether Check can see anything on this system at all.
const Supported = false

// Check cannot look at another process on macOS.
func Check(int, []Sock) (Way, error) { return None, ErrCannotObserve }
