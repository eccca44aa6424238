package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

func runWatch(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("watch", stderr)
	apiSocket := fs.String("api-socket", exporter.DefaultAPISocket, "the agent's API socket")
	output := fs.String("o", "text", "output format: text (one line a change) or json (one object a line)")
	ff := addFilterFlags(fs, false)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkOutput(*output, "text", "json"); err != nil {
		return err
	}
	f, err := ff.filter()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	p := painter(colorEnabled(stdout))
	enc := json.NewEncoder(stdout)
	err = exporter.NewClient(*apiSocket).Watch(ctx, f, func(ch collector.Change) error {
		if *output == "json" {
			return enc.Encode(ch)
		}
		_, err := io.WriteString(stdout, changeLine(&ch, p)+"\n")
		return err
	})
	if ctx.Err() != nil {
		return nil // interrupted: the normal way to stop
	}
	if errors.Is(err, exporter.ErrNoAgent) {
		return fmt.Errorf("no agent is listening on %s; watch needs a running agent (only ls and who can fall back to a one-shot snapshot)", *apiSocket)
	}
	if err != nil {
		return agentError(*apiSocket, err)
	}
	return errors.New("the watch stream ended")
}

// changeLine renders one change:
//
//	12:00:01.123 STATE ESTABLISHED->FIN_WAIT1 127.0.0.1:5000 -> 127.0.0.1:80 curl/1234
//	12:00:03.000 VERDICT ghost 127.0.0.1:5000 -> 127.0.0.1:80 curl/1234: detail
//	12:00:09.000 CLEARED ghost 127.0.0.1:5000 -> 127.0.0.1:80 curl/1234
//	12:00:10.000 LOST 12 changes (this watcher read too slowly)
//	12:00:11.000 ACTION abort 127.0.0.1:5000 -> 127.0.0.1:80 via bpf_sock_destroy by uid 0 pid 99: done
func changeLine(ch *collector.Change, p painter) string {
	ts := ch.Time.Local().Format("15:04:05.000")
	conn := fmt.Sprintf("%s -> %s", ch.Local, ch.Remote)
	who := changeProcess(ch)
	if who != "" {
		conn += " " + who
	}
	switch ch.Type {
	case "state":
		trans := ch.State.String()
		if ch.From != 0 {
			trans = ch.From.String() + "->" + trans
		}
		s := fmt.Sprintf("%s STATE %s %s", ts, trans, conn)
		if ch.Source != "" && ch.Source != "kernel" {
			s += " (" + ch.Source + ")"
		}
		return s
	case "verdict":
		if ch.Verdict == nil {
			break
		}
		return fmt.Sprintf("%s %s %s %s: %s", ts, p.paint(verdictColor(ch.Verdict.Kind), "VERDICT"), p.verdict(ch.Verdict.Kind), conn, ch.Verdict.Detail)
	case "cleared":
		if ch.Verdict == nil {
			break
		}
		return fmt.Sprintf("%s CLEARED %s %s", ts, ch.Verdict.Kind, conn)
	case "lost":
		return fmt.Sprintf("%s LOST %s (this watcher read too slowly)", ts, plural(int(ch.Lost), "change", "changes"))
	case "action":
		if ch.Action == nil {
			break
		}
		a := ch.Action
		result := "done"
		if !a.Done {
			result = "not done: " + a.Error
		}
		via := ""
		if a.Mechanism != "" {
			via = " via " + a.Mechanism
		}
		return fmt.Sprintf("%s ACTION %s %s%s by uid %d pid %d: %s", ts, a.Op, conn, via, a.UID, a.PID, result)
	}
	return fmt.Sprintf("%s %s %s", ts, ch.Type, conn)
}

// changeProcess names the process behind a change: the task that caused
// it, or else the socket's first holder.
func changeProcess(ch *collector.Change) string {
	if ch.Task != nil {
		return proc(ch.Task.Comm, ch.Task.PID)
	}
	return holdersShort(ch.Holders)
}
