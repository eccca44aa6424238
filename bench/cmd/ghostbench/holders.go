package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// sockHolders are `ghostbench hold` processes, each holding both ends of
// its loopback connections on an address of its own (127.0.1.N), until
// stop closes their stdin.
type sockHolders struct {
	procs  []*proc
	stdins []io.WriteCloser
}

// maxHolders bounds how many holders one run starts: their addresses are
// 127.0.1.1 to 127.0.1.250.
const maxHolders = 250

// add starts n more holders of pairs connections each and waits until
// all of them hold their sockets (3 minutes at most).
func (h *sockHolders) add(self string, n, pairs int) error {
	if pairs*2 > 19900 {
		return fmt.Errorf("%d connections a holder is %d fds each: use more holders to stay under 20k", pairs, pairs*2)
	}
	if len(h.procs)+n > maxHolders {
		return fmt.Errorf("%d holders: at most %d", len(h.procs)+n, maxHolders)
	}
	type readyMsg struct {
		i   int
		err error
	}
	readyCh := make(chan readyMsg, n)
	for i := 0; i < n; i++ {
		pr, pw, err := os.Pipe()
		if err != nil {
			return err
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			pr.Close()
			pw.Close()
			return err
		}
		addr := fmt.Sprintf("127.0.1.%d", len(h.procs)+1)
		p, err := startProc("holder "+addr, pr, outW, os.Stderr, self, "hold", "-pairs", strconv.Itoa(pairs), "-addr", addr)
		pr.Close()
		outW.Close()
		if err != nil {
			pw.Close()
			outR.Close()
			return err
		}
		h.procs = append(h.procs, p)
		h.stdins = append(h.stdins, pw)
		go func(i int) {
			defer outR.Close()
			line, err := bufio.NewReader(outR).ReadString('\n')
			if err == nil && !strings.HasPrefix(line, "ready ") {
				err = fmt.Errorf("unexpected %q", line)
			}
			readyCh <- readyMsg{i, err}
			_, _ = io.Copy(io.Discard, outR)
		}(len(h.procs) - 1)
	}
	timeout := time.After(3 * time.Minute)
	for k := 0; k < n; k++ {
		select {
		case m := <-readyCh:
			if m.err != nil {
				return fmt.Errorf("holder %d: %w", m.i, m.err)
			}
		case <-timeout:
			return fmt.Errorf("holders not ready after 3m")
		}
	}
	return nil
}

// stop ends every holder: SO_LINGER 0 resets their sockets.
func (h *sockHolders) stop() {
	for _, w := range h.stdins {
		w.Close()
	}
	for _, p := range h.procs {
		p.stop()
	}
	h.procs, h.stdins = nil, nil
}
