package collector

// RingReader exposes the reader seam to the external tests.
type RingReader = ringReader

// WrapReader replaces the collector's ring-buffer reader with wrap(reader),
// before Run, so a test can inject read failures.
func (c *Collector) WrapReader(wrap func(RingReader) RingReader) { c.reader = wrap(c.reader) }
