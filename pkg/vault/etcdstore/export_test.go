package etcdstore

// SetLoseReply sets the test hook that drops transaction answers.
func SetLoseReply(f func() bool) { loseReply = f }
