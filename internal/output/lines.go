//go:build linux || darwin

// This file holds a pipe's reader: lines out of what a worker writes, and
// their format in prefix and json mode.
package output

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"strconv"
	"time"
)

// label is what goes around each line of one worker's stream.
type label struct {
	mode       Mode
	head, cont []byte // prefix: "0.4242| " and, for a piece continued on the next line, "0.4242+ "
	json       []byte // json: every field after the time, up to "line":
}

func newLabel(m Mode, slot, pid, gen int, stream string) label {
	id := strconv.Itoa(slot) + "." + strconv.Itoa(pid)
	return label{mode: m, head: []byte(id + "| "), cont: []byte(id + "+ "),
		json: []byte(`","slot":` + strconv.Itoa(slot) + `,"pid":` + strconv.Itoa(pid) +
			`,"generation":` + strconv.Itoa(gen) + `,"stream":"` + stream + `","line":`)}
}

// read relays one pipe until end of file: every line, the last one too
// when the worker ends it without a newline.
func (r *Relay) read(f *os.File, s *stream, l label) {
	defer r.readers.Done()
	defer f.Close()
	br := bufio.NewReaderSize(f, MaxLine)
	src := &source{room: make(chan struct{}, 1)}
	var str bytes.Buffer // a json string's encoding
	enc := json.NewEncoder(&str)
	enc.SetEscapeHTML(false)
	split := false // the previous piece was continued
	for {
		line, err := br.ReadSlice('\n')
		more := err == bufio.ErrBufferFull // a line longer than MaxLine: this piece is continued
		line = bytes.TrimSuffix(line, []byte("\n"))
		if len(line) > 0 || err == nil && !split {
			r.put(s, l.format(line, more, &str, enc), src)
		}
		split = more
		if err != nil && !more {
			return
		}
	}
}

// format is one line as it is written: labelled (prefix) or as an object
// (json), newline included. A continued piece is marked: "+ " after the
// label, "partial":true in its object.
func (l *label) format(line []byte, more bool, str *bytes.Buffer, enc *json.Encoder) []byte {
	if l.mode == Prefix {
		h := l.head
		if more {
			h = l.cont
		}
		b := make([]byte, 0, len(h)+len(line)+1)
		return append(append(append(b, h...), line...), '\n')
	}
	val := bytes.TrimSpace(line)
	if more || len(val) == 0 || val[0] != '{' || !json.Valid(val) {
		str.Reset()
		enc.Encode(string(line)) // invalid UTF-8 becomes U+FFFD
		val = bytes.TrimSuffix(str.Bytes(), []byte("\n"))
	}
	b := make([]byte, 0, 48+len(l.json)+len(val)+18)
	b = append(b, `{"time":"`...)
	b = time.Now().AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(append(b, l.json...), val...)
	if more {
		b = append(b, `,"partial":true`...)
	}
	return append(b, "}\n"...)
}
