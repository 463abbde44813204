package vault

import (
	"fmt"
	"testing"
	"time"
)

// Neither many addresses nor many addresses of one IPv6 /64 reset a
// client's bucket: the old limiter forgot every bucket at 65,536 entries.
func TestRateLimiterNotReset(t *testing.T) {
	for _, tc := range []struct {
		name, victim string
		other        func(i int) string
	}{
		{"ipv4 flood", "192.0.2.1", func(i int) string { return fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255) }},
		{"ipv6 flood", "2001:db8:1:2::1", func(i int) string { return fmt.Sprintf("2001:db8:%x:%x::1", i>>16, i&0xffff) }},
		{"one /64", "2001:db8:aa:bb::1", func(i int) string { return fmt.Sprintf("2001:db8:aa:bb:%x:%x::", i>>16, i&0xffff) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newRateLimiter(0.001, 3)
			for range 3 {
				if !l.allow(tc.victim) {
					t.Fatal("the burst was refused")
				}
			}
			if l.allow(tc.victim) {
				t.Fatal("the fourth request passed")
			}
			for i := range 70_000 {
				l.allow(tc.other(i))
			}
			if l.allow(tc.victim) {
				t.Fatal("after 70,000 other addresses the client's bucket was reset")
			}
			if len(l.buckets) > l.maxClients {
				t.Fatalf("%d buckets, more than %d", len(l.buckets), l.maxClients)
			}
		})
	}
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":            "192.0.2.7",
		"::ffff:192.0.2.7":     "192.0.2.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::9": "2001:db8:1:2::/64",
		"fe80::1%eth0":         "fe80::/64",
		"not an address":       "not an address",
	} {
		if got := clientKey(in); got != want {
			t.Errorf("clientKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// A full limiter admits new clients again once old buckets have refilled.
func TestRateLimiterMakesRoom(t *testing.T) {
	l := newRateLimiter(100, 2)
	l.maxClients = 4
	for i := range 4 {
		l.allow(fmt.Sprintf("192.0.2.%d", i))
	}
	if l.allow("198.51.100.1") {
		t.Fatal("a fifth client while the four buckets are in use")
	}
	time.Sleep(30 * time.Millisecond)
	if !l.allow("198.51.100.1") {
		t.Fatal("no room after the buckets refilled")
	}
}
