//go:build linux || darwin

// Tests of the Node IPC codec: how lines are split and parsed.
package nodecluster

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestNodeLineParsing(t *testing.T) {
	var m msg
	for _, tc := range []struct {
		line     string
		ok       bool
		cmd, act string
	}{
		{`{"cmd":"NODE_HANDLE_ACK"}`, true, "NODE_HANDLE_ACK", ""},
		{`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`, true, "NODE_CLUSTER", "online"},
		{`{"act":"suicide"}`, true, "", "suicide"},
		{`{"cmd":"mine","act":"suicide"}`, true, "", "suicide"}, // a user object with a cmd
		{`{"cmd":"NODE_","act":"x"}`, true, "", "x"},            // NODE_ alone is not internal
		{`"server"`, false, "", ""},
		{`42`, false, "", ""},
		{`{"seq":"not a number","act":"suicide"}`, true, "", "suicide"},
		{`{broken`, false, "", ""},
	} {
		ok := parseLine([]byte(tc.line), &m)
		if ok != tc.ok || ok && (m.Cmd != tc.cmd || m.Act != tc.act) {
			t.Errorf("%s: ok=%v cmd=%q act=%q, want ok=%v cmd=%q act=%q", tc.line, ok, m.Cmd, m.Act, tc.ok, tc.cmd, tc.act)
		}
	}
}

// The hand-written parser of the per-connection ack line agrees with encoding/json.
func TestNodeAcceptedLine(t *testing.T) {
	for _, line := range []string{
		`{"cmd":"NODE_CLUSTER","ack":2,"accepted":true,"seq":3}`,
		`{"cmd":"NODE_CLUSTER","ack":4294967295,"accepted":false,"seq":0}`,
		`{"cmd":"NODE_CLUSTER","ack":2,"accepted":true,"seq":3,"x":1}`,
		`{"cmd":"NODE_CLUSTER","ack":-2,"accepted":true,"seq":3}`,
		`{"cmd":"NODE_CLUSTER","ack":2,"accepted":truex,"seq":3}`,
		`{"cmd":"NODE_CLUSTER","ack":2.5,"accepted":true,"seq":3}`,
	} {
		var fast, slow msg
		ok := parseAcceptedLine([]byte(line), &fast)
		json.Unmarshal([]byte(line), &slow)
		if ok && (fast.Cmd != slow.Cmd || fast.Accepted != slow.Accepted || fast.Ack.n != slow.Ack.n || fast.Seq.n != slow.Seq.n) {
			t.Errorf("%s: fast %+v, encoding/json %+v", line, fast, slow)
		}
		if want := strings.Count(line, ",") == 3 && !strings.ContainsAny(line, "-.x"); ok != want {
			t.Errorf("%s: fast path taken %v, want %v", line, ok, want)
		}
	}
}
