// Package exporter serves what the collector knows: the local JSON query
// API on a unix socket (used by the ghostconn CLI) and, later, Prometheus
// metrics.
package exporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
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

// API answers queries about the connection table:
//
//	GET /v1/connections?FILTER   a JSON array of connections
//	GET /v1/watch?FILTER         a stream of changes, one JSON object a line
//	GET /v1/status               the agent's counters
//	GET /v1/top?FILTER&limit=N   counts and one screen of rows (see TopAnswer)
//	POST /v1/kill                abort or close connections (a collector.KillRequest)
//	POST /v1/keepalive           arm keepalive on connections (a collector.KeepaliveRequest)
//	GET /debug/pprof/...         Go runtime profiles (net/http/pprof)
//
// The profiles are served only here, on the root-only unix socket, never
// on the metrics listener.
// FILTER is what ParseFilter accepts. Bad parameters get 400 with a JSON
// body {"error": "..."}.
type API struct {
	src Source
	now func() time.Time
	mux *http.ServeMux
}

// NewAPI returns the query API over src.
func NewAPI(src Source) *API {
	a := &API{src: src, now: time.Now, mux: http.NewServeMux()}
	a.mux.HandleFunc("GET /v1/connections", a.connections)
	a.mux.HandleFunc("GET /v1/watch", a.watch)
	a.mux.HandleFunc("GET /v1/status", a.status)
	a.mux.HandleFunc("GET /v1/top", a.top)
	a.mux.HandleFunc("POST /v1/kill", a.kill)
	a.mux.HandleFunc("POST /v1/keepalive", a.keepalive)
	a.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	a.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	a.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	a.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	a.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, Error{Error: fmt.Sprintf("no such endpoint %s %s (known: GET /v1/connections, /v1/watch, /v1/status, /v1/top, /debug/pprof/; POST /v1/kill, /v1/keepalive)", r.Method, r.URL.Path)})
	})
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

func badRequest(w http.ResponseWriter, err error) {
	writeJSON(w, http.StatusBadRequest, Error{Error: err.Error()})
}

func (a *API) connections(w http.ResponseWriter, r *http.Request) {
	f, err := ParseFilter(r.URL.Query())
	if err != nil {
		badRequest(w, err)
		return
	}
	opts := collector.ListOptions{Closed: f.Closed, History: f.History, Match: f.Match}
	w.Header().Set("Content-Type", "application/json")
	if f.Sort == "" && !f.Closed {
		// The common case, `ghostconn ls`: live connections in cookie
		// order, streamed from the table a chunk at a time, never held
		// whole (70 MB of views at 100k). The count is known only at
		// the end: a trailer.
		w.Header().Set("Trailer", CountHeader)
		w.WriteHeader(http.StatusOK)
		cw := NewConnViewWriter(w)
		n, err := a.src.Table().ListLive(a.now(), opts, cw.Write)
		if err == nil {
			_ = cw.Close() // else the client went away
		}
		w.Header().Set(CountHeader, strconv.Itoa(n))
		return
	}
	conns := a.src.Table().List(a.now(), opts)
	Sort(conns, f.Sort)
	w.Header().Set(CountHeader, strconv.Itoa(len(conns)))
	w.WriteHeader(http.StatusOK)
	_ = WriteConnViews(w, conns) // the client went away
}

// CountHeader carries the number of connections in a /v1/connections
// answer, so a client that copies the body through knows it: a header
// when the answer was sorted or includes closed connections, else a
// trailer (the list is streamed as the table is read).
const CountHeader = "X-Ghostconn-Count"

// watch streams changes that pass the filter until the client goes away.
func (a *API) watch(w http.ResponseWriter, r *http.Request) {
	f, err := ParseFilter(r.URL.Query())
	if err != nil {
		badRequest(w, err)
		return
	}
	if f.Sort != "" || f.Closed || f.History || f.Target != nil {
		badRequest(w, errors.New("watch takes only verdict, state, pid, comm, port and remote"))
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeJSON(w, http.StatusInternalServerError, Error{Error: "streaming unsupported"})
		return
	}
	sub, err := a.src.Table().Subscribe(4096)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: err.Error()})
		return
	}
	defer sub.Cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	enc := json.NewEncoder(w)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case ch := <-sub.C:
			// Send it and what is queued behind it, one flush a batch.
			for n := 0; ; n++ {
				if v := ch.View(); f.Match(&v) {
					if err := enc.Encode(ch); err != nil {
						return
					}
				}
				if n == 256 || len(sub.C) == 0 {
					break
				}
				ch = <-sub.C
			}
			flusher.Flush()
		case <-tick.C:
			if lost := sub.Lost(); lost > 0 {
				if err := enc.Encode(collector.Change{Time: a.now(), Type: "lost", Lost: lost}); err != nil {
					return
				}
				flusher.Flush()
			}
		}
	}
}

// ActionSource is a Source that can also act on connections; *collector.Collector
// is one.
type ActionSource interface {
	Kill(collector.KillRequest, collector.Caller) ([]collector.ActionResult, error)
	Keepalive(collector.KeepaliveRequest, collector.Caller) ([]collector.ActionResult, error)
}

// callerKey is the context key of an API client's peer credentials.
type callerKey struct{}

// ConnContext is for http.Server.ConnContext on the API socket: it keeps
// each client's peer credentials (SO_PEERCRED), which actions are audited
// with.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil {
		return ctx
	}
	return context.WithValue(ctx, callerKey{}, collector.Caller{UID: cred.Uid, PID: uint32(cred.Pid)})
}

// kill acts on the connections a KillRequest names, for a client whose
// peer credentials are known, and answers what was done to each.
func (a *API) kill(w http.ResponseWriter, r *http.Request) {
	var req collector.KillRequest
	serveAction(a, w, r, &req, func(src ActionSource, by collector.Caller) ([]collector.ActionResult, error) {
		if len(req.Cookies) == 0 {
			return nil, badRequestError{errors.New("kill request names no connection (cookies is empty)")}
		}
		return src.Kill(req, by)
	})
}

// keepalive arms keepalive on the connections a KeepaliveRequest names.
func (a *API) keepalive(w http.ResponseWriter, r *http.Request) {
	var req collector.KeepaliveRequest
	serveAction(a, w, r, &req, func(src ActionSource, by collector.Caller) ([]collector.ActionResult, error) {
		if len(req.Cookies) == 0 {
			return nil, badRequestError{errors.New("keepalive request names no connection (cookies is empty)")}
		}
		if err := req.Check(); err != nil {
			return nil, badRequestError{err}
		}
		return src.Keepalive(req, by)
	})
}

// badRequestError is an action request's fault: a 400.
type badRequestError struct{ error }

// serveAction decodes an action request into req, runs do for a client
// whose peer credentials are known, and answers its results.
func serveAction(a *API, w http.ResponseWriter, r *http.Request, req any, do func(ActionSource, collector.Caller) ([]collector.ActionResult, error)) {
	src, ok := a.src.(ActionSource)
	if !ok {
		writeJSON(w, http.StatusNotImplemented, Error{Error: "this API cannot act on connections"})
		return
	}
	caller, ok := r.Context().Value(callerKey{}).(collector.Caller)
	if !ok {
		writeJSON(w, http.StatusForbidden, Error{Error: "actions are served only on the agent's unix socket, to a client whose credentials it can read"})
		return
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(req); err != nil {
		badRequest(w, fmt.Errorf("action request: %w", err))
		return
	}
	res, err := do(src, caller)
	var bad badRequestError
	switch {
	case errors.As(err, &bad):
		badRequest(w, bad.error)
	case errors.Is(err, collector.ErrReadOnly):
		writeJSON(w, http.StatusForbidden, Error{Error: err.Error()})
	case err != nil:
		writeJSON(w, http.StatusInternalServerError, Error{Error: err.Error()})
	default:
		writeJSON(w, http.StatusOK, res)
	}
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
