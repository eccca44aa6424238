package main

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

// FuzzAgentFlags: any argument list is accepted or refused with a usage
// error (exit 2), never a panic, and what is accepted is within bounds.
func FuzzAgentFlags(f *testing.F) {
	for _, s := range []string{
		"", "--reconcile-interval 5s", "--ring-buffer-bytes 4096", "--ring-buffer-bytes 5000",
		"--ghost-grace 0s", "--metrics-address :9977", "--metrics-address nope", "--disable-programs sys_enter_close",
		"--disable-programs inet_sock_set_state", "--pin-dir relative", "--log-level debug", "--kernel-hz -1",
		"--unresponsive-after-rtos 300", "--api-socket /run/x.sock", "--web.config.file /nonexistent", "extra",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		cfg, err := parseAgentFlags(strings.Fields(line), io.Discard)
		if err != nil {
			var ue usageError
			if !errors.As(err, &ue) && !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("%q: error %v is not a usage error", line, err)
			}
			return
		}
		c := cfg.collector
		if c.ReconcileInterval < 1e9 || c.RingBufferBytes < 4096 || c.RingBufferBytes&(c.RingBufferBytes-1) != 0 ||
			c.Table.MaxConns <= 0 || c.Table.Verdicts.GhostGrace <= 0 || c.Table.Verdicts.UnresponsiveRTOs < 1 {
			t.Fatalf("%q accepted out-of-bounds config %+v", line, c)
		}
	})
}
