//go:build unix

// TEMPORARY: stands in for the listeners and rr branches until they land.
package main

import (
	"errors"
	"log/slog"
	"os"
)

var _ = os.Getpid

type dispatcher struct{}

func newDispatcher(lfds []int, window int, log *slog.Logger, onBroken func(id int, err error)) (*dispatcher, error) {
	return nil, errors.New("stub")
}
func (d *dispatcher) attach(id int, fd int)           {}
func (d *dispatcher) ready(id int)                    {}
func (d *dispatcher) drain(id int)                    {}
func (d *dispatcher) detach(id int)                   {}
func (d *dispatcher) close()                          {}
func newHandoffPair() (master, worker int, err error) { return 0, 0, errors.New("stub") }
