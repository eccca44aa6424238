package main

import (
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/ghostconn/ghostconn/exporter"
)

func runStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", stderr)
	apiSocket := fs.String("api-socket", exporter.DefaultAPISocket, "the agent's API socket")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := exporter.NewClient(*apiSocket).Status(ctx)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}
