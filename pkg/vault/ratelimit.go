package vault

import (
	"net/netip"
	"sync"
	"time"
)

// rateLimiter is a token bucket per client: an IPv4 address, or an IPv6
// /64 (the block one subscriber gets, so hopping between its addresses
// does not buy fresh buckets). It holds at most maxClients buckets. When
// full it forgets the buckets that have refilled, which is lossless (a
// full bucket is what a new client gets); if every bucket is still in use
// a new client is refused until some refill, so an attacker with many
// addresses can deny service for a while but never reset anyone's limit.
type rateLimiter struct {
	mu         sync.Mutex
	rate       float64
	burst      float64
	maxClients int
	buckets    map[string]*bucket
	// noRoomUntil: the map was full and no bucket refills before then, so
	// new clients are refused without scanning it again.
	noRoomUntil time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int) *rateLimiter {
	if burst < 1 {
		burst = 1
	}
	return &rateLimiter{rate: rate, burst: float64(burst), maxClients: 1 << 16, buckets: map[string]*bucket{}}
}

// clientKey maps an address to its bucket's name.
func clientKey(addr string) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

func (l *rateLimiter) refill(b *bucket, now time.Time) {
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
}

func (l *rateLimiter) allow(addr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	key := clientKey(addr)
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.maxClients {
			if now.Before(l.noRoomUntil) {
				return false
			}
			soonest := time.Duration(1<<63 - 1)
			for k, o := range l.buckets {
				if l.refill(o, now); o.tokens >= l.burst {
					delete(l.buckets, k)
				} else {
					soonest = min(soonest, time.Duration((l.burst-o.tokens)/l.rate*float64(time.Second)))
				}
			}
			if len(l.buckets) >= l.maxClients {
				l.noRoomUntil = now.Add(soonest)
				return false
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	l.refill(b, now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
