package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// topWindow runs `ghostconn top` on a pseudo-terminal of 120x40 for dur
// against the agent on sock, and returns the CPU the agent and top used
// over it. The screen goes to nowhere; what top asks of the agent each
// second is what a person watching it would cost.
func topWindow(bin, sock string, agentPid int, dur time.Duration) (agentCPU, topCPU, wall time.Duration, err error) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("open a pty for top: %w", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		return 0, 0, 0, fmt.Errorf("unlock the pty: %w", err)
	}
	n, err := unix.IoctlGetUint32(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("pty number: %w", err)
	}
	if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 120}); err != nil {
		return 0, 0, 0, fmt.Errorf("pty size: %w", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("open the pty's terminal: %w", err)
	}
	cmd := exec.Command(bin, "top", "--api-socket", sock)
	cmd.Env = append(os.Environ(), "TERM=xterm-256color")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		slave.Close()
		return 0, 0, 0, fmt.Errorf("start ghostconn top: %w", err)
	}
	slave.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	go func() { _, _ = io.Copy(io.Discard, master) }()
	stop := func() {
		cmd.Process.Kill()
		<-done
	}
	// Its first screen comes after its first answer: start counting after.
	time.Sleep(3 * time.Second)
	a0, err1 := procCPU(agentPid)
	t0, err2 := procCPU(cmd.Process.Pid)
	if err := firstErr(err1, err2); err != nil {
		stop()
		return 0, 0, 0, fmt.Errorf("ghostconn top did not stay up: %w", err)
	}
	w0 := time.Now()
	time.Sleep(dur)
	a1, err1 := procCPU(agentPid)
	t1, err2 := procCPU(cmd.Process.Pid)
	wall = time.Since(w0)
	if err := firstErr(err1, err2); err != nil {
		stop()
		return 0, 0, 0, fmt.Errorf("ghostconn top did not stay up: %w", err)
	}
	if _, err := master.WriteString("q"); err != nil {
		stop()
		return 0, 0, 0, fmt.Errorf("send q to top: %w", err)
	}
	select {
	case err := <-done:
		if err != nil {
			return 0, 0, 0, fmt.Errorf("ghostconn top after q: %w", err)
		}
	case <-time.After(10 * time.Second):
		stop()
		return 0, 0, 0, fmt.Errorf("ghostconn top still running 10s after q")
	}
	return a1 - a0, t1 - t0, wall, nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
