package collector_test

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/bpf"
	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/internal/privtest"
)

// killPair returns a loopback connection's client end and its view as
// a one-shot snapshot sees it.
func killPair(t *testing.T) (client, server net.Conn, v collector.ConnView) {
	t.Helper()
	client, server = pair(t, "tcp4", "127.0.0.1:0")
	t.Cleanup(func() { client.Close(); server.Close() })
	all, err := collector.OneShot(0, collector.DefaultVerdictConfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all {
		if c.Local == client.LocalAddr().String() && c.Remote == client.RemoteAddr().String() {
			return client, server, c
		}
	}
	t.Fatalf("%s not in the snapshot", client.LocalAddr())
	return
}

// TestKillerMechanisms: the Actor aborts through bpf_sock_destroy where
// the kernel has it and through sock_diag otherwise (or when told to);
// with both turned off it names what is missing and does nothing; a
// LISTEN socket is refused unless asked for.
func TestKillerMechanisms(t *testing.T) {
	privtest.Require(t)
	probes, err := bpf.Load(bpf.Options{IteratorsOnly: true, RingBufferBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer probes.Close()
	want := collector.MechSockDiag
	if bpf.SockDestroyAvailable() {
		want = collector.MechSockDestroy
	}
	for _, tc := range []struct {
		name   string
		killer collector.Actor
		mech   string
	}{
		{"default", collector.Actor{Probes: probes}, want},
		{"sock_diag", collector.Actor{Probes: probes, NoSockDestroy: true}, collector.MechSockDiag},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server, v := killPair(t)
			res := tc.killer.Kill([]collector.ConnView{v}, false, false)
			if len(res) != 1 || !res[0].Done || res[0].Mechanism != tc.mech || res[0].After != "gone" {
				t.Fatalf("kill: %+v, want done through %s", res, tc.mech)
			}
			server.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := server.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("peer read: %v, want ECONNRESET", err)
			}
			if _, err := client.Write([]byte("x")); !errors.Is(err, syscall.ECONNABORTED) {
				t.Errorf("holder write: %v, want ECONNABORTED", err)
			}
		})
	}
	t.Run("none", func(t *testing.T) {
		client, _, v := killPair(t)
		k := collector.Actor{Probes: probes, NoSockDestroy: true, NoSockDiag: true}
		res := k.Kill([]collector.ConnView{v}, false, false)
		if len(res) != 1 || res[0].Done || !strings.Contains(res[0].Error, "bpf_sock_destroy is turned off, and sock_diag is turned off") {
			t.Fatalf("kill with no mechanism: %+v", res)
		}
		if _, err := client.Write([]byte("x")); err != nil {
			t.Errorf("connection after a kill with no mechanism: %v", err)
		}
	})
	t.Run("listen", func(t *testing.T) {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		all, err := collector.OneShot(0, collector.DefaultVerdictConfig)
		if err != nil {
			t.Fatal(err)
		}
		var v *collector.ConnView
		for i := range all {
			if all[i].Local == ln.Addr().String() && all[i].State == collector.StateListen {
				v = &all[i]
			}
		}
		if v == nil {
			t.Fatal("listener not in the snapshot")
		}
		k := collector.Actor{Probes: probes}
		if res := k.Kill([]collector.ConnView{*v}, false, false); res[0].Done || !strings.Contains(res[0].Error, "--state LISTEN") {
			t.Errorf("kill of a LISTEN socket not asked for: %+v", res[0])
		}
		if c, err := net.Dial("tcp4", ln.Addr().String()); err != nil {
			t.Fatalf("listener after a refused kill: %v", err)
		} else {
			c.Close()
		}
		// Asked for, it is tried; 6.18 refuses (EINVAL through both
		// mechanisms), and then kill says so and claims nothing.
		res := k.Kill([]collector.ConnView{*v}, false, true)
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err == nil {
			c.Close()
		}
		switch {
		case res[0].Done && err == nil:
			t.Errorf("kill of a LISTEN socket claims success, and it still accepts: %+v", res[0])
		case !res[0].Done && (err != nil || !strings.Contains(res[0].Error, "refuses to abort LISTEN sockets")):
			t.Errorf("kill of a LISTEN socket asked for: %+v (dial afterwards: %v)", res[0], err)
		}
	})
}
