package collector

// Take exposes take to the external tests, with counters read back.
func (c *Collector) Take(dec *Decoder, raw []byte, batch []Event) (out []Event, read, decodeErrors uint64) {
	out = c.take(dec, raw, batch)
	return out, c.eventsRead.Load(), c.decodeErrors.Load()
}
