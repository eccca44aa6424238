package bpf

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/internal/privtest"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// closesPinDir returns a fresh directory under bpffs, removed at cleanup.
// A new machine has no bpffs mounted: it is mounted as the agent does.
func closesPinDir(t *testing.T) string {
	t.Helper()
	if err := EnsureBPFFS(); err != nil {
		t.Fatal(err)
	}
	dir := fmt.Sprintf("/sys/fs/bpf/gctest-closes-%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestPinnedClosesFromOldLayoutReplaced: a closes map pinned by a build
// keyed by cookie alone is replaced by one of the current layout, and
// PinReset says so; a second load keeps the new pin.
func TestPinnedClosesFromOldLayoutReplaced(t *testing.T) {
	privtest.Require(t)
	dir := closesPinDir(t)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "closes", Type: ebpf.LRUHash, KeySize: 8, ValueSize: 48, MaxEntries: 65536,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(dir, "closes")); err != nil {
		t.Fatal(err)
	}
	old.Close()

	p, err := Load(Options{PinDir: dir, Skip: skipAllOptional()})
	if err != nil {
		t.Fatalf("load over an old pinned map: %v", err)
	}
	if !p.PinReset {
		t.Error("PinReset is false after replacing a map of another layout")
	}
	if ks := p.Closes.KeySize(); ks != 16 {
		t.Errorf("closes key size %d, want 16 (struct close_key)", ks)
	}
	p.Close()

	p, err = Load(Options{PinDir: dir, Skip: skipAllOptional()})
	if err != nil {
		t.Fatalf("second load: %v", err)
	}
	defer p.Close()
	if p.PinReset {
		t.Error("PinReset is true on a load over a pin of the same layout")
	}
}

// skipAllOptional leaves out every optional program: the pin tests need
// only the maps.
func skipAllOptional() map[string]bool {
	skip := map[string]bool{}
	for _, name := range ProgramNames() {
		if !Required(name) {
			skip[name] = true
		}
	}
	return skip
}

// tcpPair returns the client end of a loopback connection as an *os.File
// (the only copy in this process, at fd pairFD) and closes what else it
// made at cleanup, with the id the programs give its socket.
func tcpPair(t *testing.T, p *Probes) (*os.File, uint64) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		if s, err := ln.Accept(); err == nil {
			accepted <- s
		}
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	t.Cleanup(func() { s.Close() })
	dup, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	// The children get the socket at fd 3: were this process's copy at
	// fd 3 too, a child's copy would look inherited from here. Move it to
	// a fixed fd well above what the test process has open.
	if _, err := unix.FcntlInt(pairFD, unix.F_GETFD, 0); err != unix.EBADF {
		dup.Close()
		t.Fatalf("fd %d is already open here (%v): Dup3 would close it", pairFD, err)
	}
	err = unix.Dup3(int(dup.Fd()), pairFD, unix.O_CLOEXEC)
	dup.Close()
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(pairFD, "tcp-client")
	t.Cleanup(func() { f.Close() })
	id, err := p.SocketID(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return f, id
}

// pairFD is where tcpPair puts the socket it returns.
const pairFD = 100

func slotRec(t *testing.T, p *Probes, cookie uint64, slot GhostconnCloseSlot) (GhostconnCloseRec, bool) {
	t.Helper()
	recs, err := p.CloseRecords()
	if err != nil {
		t.Fatal(err)
	}
	r, ok := recs[GhostconnCloseKey{Cookie: cookie, Slot: uint32(slot)}]
	return r, ok
}

func recText(r GhostconnCloseRec) string {
	return fmt.Sprintf("pid %d ppid %d fd %d op %d refs %d comm %q", r.Pid, r.Ppid, r.Fd, r.Op, r.Refs, commOf(r))
}

func commOf(r GhostconnCloseRec) string {
	var b []byte
	for _, c := range r.Comm {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// TestCloseSlots drives each kind of close evidence through the kernel:
// a fork child closing the copy it inherited from a parent that still has
// it goes to the inherited slot; the exit of a process holding its own
// copy (its parent has none) is kept in the own slot with op exit; the
// exit of a fork child whose parent still has the file is not kept.
func TestCloseSlots(t *testing.T) {
	privtest.Require(t)
	p, err := Load(Options{})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer p.Close()
	if lacks := KernelLacks(ProgExit); lacks != "" {
		// Before 5.17 the exit hook cannot load: it must say why, and the
		// exit evidence below comes from the holder walk instead.
		checkAttached(t, p, ProgExit)
		return
	}
	if err := p.Attached[ProgExit]; err != nil {
		t.Fatalf("%s not attached: %v", ProgExit, err)
	}
	f, cookie := tcpPair(t, p)

	// sh (P) holds the socket at fd 3; a subshell (its child K) closes the
	// inherited copy; another subshell exits holding it; a background
	// sleep (B) keeps a copy; then P becomes sleep and is killed, exiting
	// with its own copy once this process has closed its own (a child's
	// exit while its parent still has the file is no evidence).
	holder := exec.Command("sh", "-c", "(exec 3>&-); (:); sleep 600 & echo $!; exec sleep 60")
	holder.ExtraFiles = []*os.File{f}
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		holder.Process.Kill()
		holder.Wait()
	}()
	var bg int
	if _, err := fmt.Fscan(out, &bg); err != nil {
		t.Fatalf("read the background sleep's pid: %v", err)
	}
	defer unix.Kill(bg, unix.SIGKILL)
	pid := uint32(holder.Process.Pid)
	testutil.Eventually(t, 10*time.Second, "the holder to exec sleep", func() (bool, string) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		return err == nil && strings.TrimSpace(string(comm)) == "sleep", fmt.Sprintf("comm %q, %v", comm, err)
	})

	r, ok := slotRec(t, p, cookie, GhostconnCloseSlotCLOSE_SLOT_INHERITED)
	// dash saves fd 3 at 10 or above before it closes it, and closes both:
	// either close is the subshell dropping its inherited copy.
	if !ok || r.Ppid != pid || r.Pid == pid || r.Op != uint8(GhostconnCloseOpCLOSE_OP_CLOSE) || r.Refs < 3 || commOf(r) != "sh" {
		t.Errorf("inherited slot: %v (%s), want the subshell's close, child of %d, at least 3 references", ok, recText(r), pid)
	}
	// The own slot has only this process's close of the copy it handed
	// over (os/exec closes nothing of ours; the test closed the dup).
	if r, ok := slotRec(t, p, cookie, GhostconnCloseSlotCLOSE_SLOT_OWN); ok && r.Op == uint8(GhostconnCloseOpCLOSE_OP_EXIT) {
		t.Errorf("own slot holds an exit before anyone with an own copy exited: %s (the subshell's exit was kept)", recText(r))
	}

	f.Close()
	holder.Process.Kill()
	holder.Wait()
	testutil.Eventually(t, 5*time.Second, "the holder's exit in the own slot", func() (bool, string) {
		r, ok := slotRec(t, p, cookie, GhostconnCloseSlotCLOSE_SLOT_OWN)
		return ok && r.Op == uint8(GhostconnCloseOpCLOSE_OP_EXIT), fmt.Sprintf("%v %s", ok, recText(r))
	})
	r, _ = slotRec(t, p, cookie, GhostconnCloseSlotCLOSE_SLOT_OWN)
	if r.Pid != pid || r.Ppid != uint32(os.Getpid()) || r.Fd != 3 || r.Refs != 2 || commOf(r) != "sleep" {
		t.Errorf("own slot: %s, want sleep (pid %d, child of %d) exiting with fd 3, 2 references", recText(r), pid, os.Getpid())
	}
	if r2, _ := slotRec(t, p, cookie, GhostconnCloseSlotCLOSE_SLOT_INHERITED); r2.Ppid != pid {
		t.Errorf("the exit replaced the inherited slot: %s", recText(r2))
	}

	n, err := p.ForgetCloses(func(c uint64) bool { return c != cookie })
	if err != nil || n != 2 {
		t.Errorf("ForgetCloses = %d, %v; want both slots of the socket deleted", n, err)
	}
	if _, ok := slotRec(t, p, cookie, GhostconnCloseSlotCLOSE_SLOT_INHERITED); ok {
		t.Error("inherited slot left after ForgetCloses")
	}
}

// forkWorker is a prefork worker in miniature: it forks this process
// without exec; the child accepts a connection on lfd itself (the parent
// never has that socket), keeps a second reference with dup, closes its
// own fd, and blocks until killed. Between fork and the child's end only
// raw system calls run, as in syscall's forkAndExecInChild.
//
//go:norace
//go:nocheckptr
//go:nosplit
func forkWorker(lfd uintptr) (pid uintptr, errno syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if e != 0 || r != 0 {
		return r, e
	}
	fd, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, lfd, 0, 0, 0, 0, 0)
	if e == 0 {
		syscall.RawSyscall(syscall.SYS_DUP, fd, 0, 0)
		syscall.RawSyscall(syscall.SYS_CLOSE, fd, 0, 0)
	}
	for {
		syscall.RawSyscall6(syscall.SYS_PPOLL, 0, 0, 0, 0, 0, 0) // until killed
	}
}

// TestPreforkWorkerCloseIsOwn: a worker forked without exec that closes a
// socket it accepted itself (its parent never had it) makes the own slot,
// not the inherited one. (The kernel used to file every close by a
// never-exec'd child as an inherited copy, so a prefork worker's closes
// could never name the closer.)
func TestPreforkWorkerCloseIsOwn(t *testing.T) {
	privtest.Require(t)
	p, err := Load(Options{})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer p.Close()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File() // blocking, for the child's accept
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	syscall.ForkLock.Lock()
	pid, errno := forkWorker(lf.Fd())
	syscall.ForkLock.Unlock()
	if errno != 0 {
		t.Fatalf("fork: %v", errno)
	}
	defer func() {
		syscall.Kill(int(pid), syscall.SIGKILL)
		var ws syscall.WaitStatus
		syscall.Wait4(int(pid), &ws, 0, nil)
	}()
	conn, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var own GhostconnCloseRec
	var cookie uint64
	testutil.Eventually(t, 10*time.Second, "the worker's close in the closes map", func() (bool, string) {
		recs, err := p.CloseRecords()
		if err != nil {
			t.Fatal(err)
		}
		for k, r := range recs {
			if r.Pid == uint32(pid) {
				cookie, own = k.Cookie, r
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d records, none by pid %d", len(recs), pid)
	})
	r, ok := slotRec(t, p, cookie, GhostconnCloseSlotCLOSE_SLOT_OWN)
	if !ok || r.Pid != uint32(pid) || r.Ppid != uint32(os.Getpid()) || r.Op != uint8(GhostconnCloseOpCLOSE_OP_CLOSE) || r.Refs != 2 {
		t.Errorf("own slot: %v (%s), want the worker's close (pid %d, child of %d) with 2 references", ok, recText(r), pid, os.Getpid())
	}
	if r, ok := slotRec(t, p, cookie, GhostconnCloseSlotCLOSE_SLOT_INHERITED); ok {
		t.Errorf("inherited slot: %s (first seen: %s), want none (the parent never had the socket)", recText(r), recText(own))
	}
}

// TestIgnoreOwnCloses: with IgnoreOwnCloses the close hook keeps no
// evidence of this process's own close of a copy (the agent's copies of
// holders' fds); without it, the same close is kept.
func TestIgnoreOwnCloses(t *testing.T) {
	privtest.Require(t)
	for _, ignore := range []bool{true, false} {
		p, err := Load(Options{IgnoreOwnCloses: ignore})
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		f, id := tcpPair(t, p)
		dup, err := unix.Dup(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Close(dup); err != nil {
			t.Fatal(err)
		}
		recs, err := p.CloseRecords()
		if err != nil {
			t.Fatal(err)
		}
		kept := false
		for k, r := range recs {
			kept = kept || (k.Cookie == id && r.Fd == int32(dup) && r.Pid == uint32(os.Getpid()))
		}
		if kept == ignore {
			t.Errorf("IgnoreOwnCloses %t: this process's close of a copy kept %t", ignore, kept)
		}
		f.Close()
		p.Close()
	}
}
