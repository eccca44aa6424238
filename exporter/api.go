// Package exporter serves what the collector knows: the local JSON query
// API on a unix socket (used by the ghostconn CLI) and, later, Prometheus
// metrics.
package exporter

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/collector"
)

// DefaultAPISocket is where the agent listens and the CLI connects unless
// told otherwise.
const DefaultAPISocket = "/run/ghostconn/api.sock"

// Source is what the API reads from; *collector.Collector implements it.
type Source interface {
	Table() *collector.Table
	Status() (collector.Status, error)
}

// API answers queries about the connection table.
type API struct {
	src Source
	now func() time.Time
	mux *http.ServeMux
}

// NewAPI returns the query API over src.
func NewAPI(src Source) *API {
	a := &API{src: src, now: time.Now, mux: http.NewServeMux()}
	a.mux.HandleFunc("GET /v1/connections", a.connections)
	a.mux.HandleFunc("GET /v1/status", a.status)
	return a
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Error is the JSON body of every non-200 answer.
type Error struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

func badRequest(w http.ResponseWriter, format string, args ...any) {
	writeJSON(w, http.StatusBadRequest, Error{Error: fmt.Sprintf(format, args...)})
}

func boolParam(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("parameter %s=%q is not a boolean (use true or false)", name, v)
	}
	return b, nil
}

func (a *API) connections(w http.ResponseWriter, r *http.Request) {
	for name := range r.URL.Query() {
		switch name {
		case "closed", "history", "verdict":
		default:
			badRequest(w, "unknown parameter %q (known: closed, history, verdict)", name)
			return
		}
	}
	opts := collector.ListOptions{}
	if v := r.URL.Query().Get("verdict"); v != "" {
		kind, err := collector.ParseVerdict(v)
		if err != nil {
			badRequest(w, "%v", err)
			return
		}
		opts.Match = func(c *collector.ConnView) bool {
			for _, v := range c.Verdicts {
				if v.Kind == kind {
					return true
				}
			}
			return false
		}
	}
	closed, err := boolParam(r, "closed")
	if err != nil {
		badRequest(w, "%v", err)
		return
	}
	history, err := boolParam(r, "history")
	if err != nil {
		badRequest(w, "%v", err)
		return
	}
	opts.Closed, opts.History = closed, history
	conns := a.src.Table().List(a.now(), opts)
	writeJSON(w, http.StatusOK, conns)
}

func (a *API) status(w http.ResponseWriter, r *http.Request) {
	s, err := a.src.Status()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, Error{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// ListenUnix creates the API socket at path, owned by the agent's user and
// readable and writable by it alone (0600). A stale socket from an earlier
// run is replaced; any other file at path is an error.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create api socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("api socket path %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale api socket: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("check api socket path: %w", err)
	}
	// The umask makes the socket 0600 from the moment it exists.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on api socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod api socket: %w", err)
	}
	return l, nil
}
