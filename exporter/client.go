package exporter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ghostconn/ghostconn/collector"
)

// Client queries a running agent over its API socket.
type Client struct {
	hc *http.Client
}

// ErrNoAgent means nothing listens on the API socket.
var ErrNoAgent = errors.New("no agent is listening")

// NewClient returns a client for the agent listening at socketPath.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", socketPath)
		if err != nil && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)) {
			return nil, fmt.Errorf("%w on %s", ErrNoAgent, socketPath)
		}
		return c, err
	}}
	return &Client{hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// open sends GET path?q with hc and returns the response of a 200 answer,
// whose body the caller closes; any other answer becomes an error carrying
// the agent's JSON error text.
func (c *Client) open(ctx context.Context, hc *http.Client, path string, q url.Values) (*http.Response, error) {
	u := "http://ghostconn" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	return c.do(hc, req)
}

// do sends req and returns the response of a 200 answer, or the agent's
// error.
func (c *Client) do(hc *http.Client, req *http.Request) (*http.Response, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var e Error
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return nil, fmt.Errorf("agent answered %s: %s", resp.Status, e.Error)
	}
	return nil, fmt.Errorf("agent answered %s", resp.Status)
}

func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	resp, err := c.open(ctx, c.hc, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read agent answer: %w", err)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decode agent answer: %w", err)
	}
	return nil
}

// Connections lists the agent's connections that pass f.
func (c *Client) Connections(ctx context.Context, f Filter) ([]collector.ConnView, error) {
	var out []collector.ConnView
	return out, c.get(ctx, "/v1/connections", f.Values(), &out)
}

// ConnectionsRaw copies the agent's JSON answer for f to w as it arrives,
// without decoding it, and returns how many connections it holds.
func (c *Client) ConnectionsRaw(ctx context.Context, f Filter, w io.Writer) (int, error) {
	resp, err := c.open(ctx, c.hc, "/v1/connections", f.Values())
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return 0, fmt.Errorf("read agent answer: %w", err)
	}
	// A header, or a trailer once the body is read (see CountHeader).
	count := resp.Header.Get(CountHeader)
	if count == "" {
		count = resp.Trailer.Get(CountHeader)
	}
	n, err := strconv.Atoi(count)
	if err != nil {
		return 0, fmt.Errorf("agent answer lacks a valid %s header or trailer", CountHeader)
	}
	return n, nil
}

// Watch streams changes that pass f to fn until ctx ends, the agent goes
// away, or fn returns an error.
func (c *Client) Watch(ctx context.Context, f Filter, fn func(collector.Change) error) error {
	hc := *c.hc
	hc.Timeout = 0 // a watch lasts
	resp, err := c.open(ctx, &hc, "/v1/watch", f.Values())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ch collector.Change
		if err := dec.Decode(&ch); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return errors.New("the agent closed the stream")
			}
			return fmt.Errorf("read watch stream: %w", err)
		}
		if err := fn(ch); err != nil {
			return err
		}
	}
}

// ErrAgentReadOnly is the answer of an agent started with --read-only to
// an action.
var ErrAgentReadOnly = errors.New("the agent runs with --read-only: it refuses every action")

// Kill asks the agent to abort (or close) the connections of req and
// returns what it did to each.
func (c *Client) Kill(ctx context.Context, req collector.KillRequest) ([]collector.ActionResult, error) {
	return c.post(ctx, "/v1/kill", req)
}

// Keepalive asks the agent to arm keepalive on the connections of req and
// returns what it did to each.
func (c *Client) Keepalive(ctx context.Context, req collector.KeepaliveRequest) ([]collector.ActionResult, error) {
	return c.post(ctx, "/v1/keepalive", req)
}

// post sends an action request and decodes its results.
func (c *Client) post(ctx context.Context, path string, req any) ([]collector.ActionResult, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://ghostconn"+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := c.do(c.hc, hreq)
	if err != nil {
		if strings.Contains(err.Error(), collector.ErrReadOnly.Error()) {
			return nil, ErrAgentReadOnly
		}
		return nil, err
	}
	defer resp.Body.Close()
	var out []collector.ActionResult
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("decode agent answer: %w", err)
	}
	return out, nil
}

// Status returns the agent's account of itself.
func (c *Client) Status(ctx context.Context) (collector.Status, error) {
	var s collector.Status
	return s, c.get(ctx, "/v1/status", nil, &s)
}
