package exporter

import "time"

// SetClock makes a answer as of now() instead of the time of the request,
// so that a test can compare its answers with the table's.
func (a *API) SetClock(now func() time.Time) { a.now = now }
