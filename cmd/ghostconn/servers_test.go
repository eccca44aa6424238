package main

import (
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// shutdownListener finds the agent's listening socket for which match
// accepts the local address, takes a copy of it with pidfd_getfd and shuts
// it down: the agent's accept() then fails, as if the listener had been
// closed under it.
func shutdownListener(t *testing.T, pid int, what string, match func(unix.Sockaddr) bool) {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(pidfd)
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", e.Name()))
		if err != nil || !strings.HasPrefix(target, "socket:") {
			continue
		}
		n, _ := strconv.Atoi(e.Name())
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			t.Fatalf("pidfd_getfd %d/%d: %v", pid, n, err)
		}
		acc, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		sa, err := unix.Getsockname(fd)
		if err == nil && acc == 1 && match(sa) {
			err := unix.Shutdown(fd, unix.SHUT_RDWR)
			unix.Close(fd)
			if err != nil {
				t.Fatalf("shutdown %s: %v", what, err)
			}
			return
		}
		unix.Close(fd)
	}
	t.Fatalf("the agent (pid %d) has no listening socket for %s", pid, what)
}

// TestSupervisedServerWhoseListenerIsClosed: the API server over a unix
// socket whose listener is closed under it is reported as stopped, with
// the listener's error; a server closed at shutdown is not. (A unix
// listener cannot be failed from outside the process: shutdown() does not
// wake its accept, so this runs in-process on the agent's own supervisor.)
func TestSupervisedServerWhoseListenerIsClosed(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{}
	stopped := make(chan error, 1)
	go superviseServer("api server on "+sock, func() error { return srv.Serve(l) }, func(err error) { stopped <- err })
	l.Close()
	select {
	case err := <-stopped:
		if !errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "api server on "+sock+" stopped") {
			t.Errorf("stopped with %v, want the server named and net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a server whose listener was closed was not reported within 10s")
	}

	l2, err := net.Listen("unix", sock+"2")
	if err != nil {
		t.Fatal(err)
	}
	srv2 := &http.Server{}
	done := make(chan struct{})
	go func() {
		superviseServer("api", func() error { return srv2.Serve(l2) }, func(err error) { stopped <- err })
		close(done)
	}()
	// Serve may not have started yet; Close before Serve also makes Serve
	// return ErrServerClosed.
	srv2.Close()
	<-done
	select {
	case err := <-stopped:
		t.Errorf("a server closed at shutdown was reported as stopped: %v", err)
	default:
	}
}

// TestServerStoppedUnderTheAgentStopsIt: when the metrics listener fails
// under a running agent, the agent notices: it says which server stopped
// and why, and exits non-zero so a supervisor restarts it, instead of
// running on without the server.
func TestServerStoppedUnderTheAgentStopsIt(t *testing.T) {
	for _, tc := range []struct {
		name  string
		what  string
		match func(a *agentProc) func(unix.Sockaddr) bool
	}{
		{"metrics", "metrics server on 127.0.0.1:", func(*agentProc) func(unix.Sockaddr) bool {
			return func(sa unix.Sockaddr) bool {
				in, ok := sa.(*unix.SockaddrInet4)
				return ok && in.Addr == [4]byte{127, 0, 0, 1}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := launchAgent(t, "", "")
			shutdownListener(t, a.cmd.Process.Pid, tc.name+" listener", tc.match(a))
			select {
			case err := <-a.exited:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() == 0 {
					t.Fatalf("agent exit = %v, want a non-zero exit\n%s", err, a.logs.String())
				}
			case <-time.After(15 * time.Second):
				a.cmd.Process.Kill()
				t.Fatalf("agent still running 15s after its %s listener was shut down\n%s", tc.name, a.logs.String())
			}
			logs := a.logs.String()
			if !strings.Contains(logs, tc.what) || !strings.Contains(logs, "stopped") {
				t.Errorf("the agent's log does not say that the %s server stopped:\n%s", tc.name, logs)
			}
		})
	}
}
