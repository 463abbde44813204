//go:build unix

package testservers

import (
	"os/exec"
	"strconv"
	"testing"
	"time"
)

func TestEtcdCluster(t *testing.T) {
	start := time.Now()
	c := Etcd(t, 3)
	t.Logf("3 members healthy after %v", time.Since(start))
	if len(c.Endpoints()) != 3 {
		t.Fatal(c.Endpoints())
	}
	c.Kill(0)
	if c.Healthy(0) {
		t.Fatal("killed member answers")
	}
	deadline := time.Now().Add(15 * time.Second)
	for !c.Healthy(1) || !c.Healthy(2) {
		if time.Now().After(deadline) {
			t.Fatal("two members have no leader")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Restart(0)
	c.WaitHealthy(20 * time.Second)
	pid := c.members[1].proc.cmd.Process.Pid
	c.Kill(1)
	if err := exec.Command("kill", "-0", strconv.Itoa(pid)).Run(); err == nil {
		t.Fatal("member still runs after Kill")
	}
}
