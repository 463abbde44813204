// Package secret reads the user's secrets — the 64-digit key and
// passwords — from files, commands, the environment or a no-echo prompt,
// never from the command line itself.
package secret

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/term"
)

// ErrNoSecret is returned when no source was configured and no terminal
// is available to ask.
var ErrNoSecret = errors.New("no key or password given")

// ErrInterrupted is returned when Ctrl-C (SIGINT) or SIGTERM arrives while
// a prompt waits for input; the terminal is restored first.
var ErrInterrupted = errors.New("interrupted")

// maxSecret bounds what is read from a file or command.
const maxSecret = 4096

// FromFile reads a secret from the first line of a file. A trailing
// newline (and carriage return) is removed; nothing else is trimmed.
func FromFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading secret: %w", err)
	}
	defer f.Close()
	return firstLine(f, path)
}

func firstLine(r io.Reader, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxSecret+1))
	if err != nil {
		return nil, fmt.Errorf("reading secret from %s: %w", what, err)
	}
	if len(data) > maxSecret {
		return nil, fmt.Errorf("secret from %s is longer than %d bytes", what, maxSecret)
	}
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		data = data[:i]
	}
	data = bytes.TrimSuffix(data, []byte("\r"))
	if len(data) == 0 {
		return nil, fmt.Errorf("secret from %s is empty", what)
	}
	return data, nil
}

// FromCommand runs a shell command and reads the secret from the first
// line of its output.
func FromCommand(command string) ([]byte, error) {
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("password command failed: %v", err)
	}
	return firstLine(bytes.NewReader(out), "the password command")
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// Prompt asks for a secret on the terminal without echo. With confirm it
// asks twice and requires the same answer.
func Prompt(prompt string, confirm bool) ([]byte, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil || !term.IsTerminal(int(tty.Fd())) {
		if tty != nil {
			tty.Close()
		}
		return nil, ErrNoSecret
	}
	defer tty.Close()
	// term.ReadPassword turns echo off and leaves Ctrl-C to the process,
	// whose handler only cancels the command's context: the read itself
	// would go on until Enter. So the read runs aside, and a signal ends
	// the prompt at once, with the terminal as it was.
	state, err := term.GetState(int(tty.Fd()))
	if err != nil {
		return nil, err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	read := func(p string) ([]byte, error) {
		fmt.Fprint(tty, p)
		type result struct {
			b   []byte
			err error
		}
		done := make(chan result, 1)
		go func() {
			b, err := term.ReadPassword(int(tty.Fd()))
			done <- result{b, err}
		}()
		select {
		case r := <-done:
			fmt.Fprintln(tty)
			return r.b, r.err
		case <-sigs:
			_ = term.Restore(int(tty.Fd()), state)
			fmt.Fprintln(tty)
			return nil, ErrInterrupted
		}
	}
	first, err := read(prompt)
	if err != nil {
		return nil, err
	}
	if len(first) == 0 {
		return nil, errors.New("empty input")
	}
	if confirm {
		second, err := read("Repeat to confirm: ")
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(first, second) {
			return nil, errors.New("the two entries differ")
		}
	}
	return first, nil
}

// AskLine asks a question on the terminal (echo on) and returns the
// answer's first line. Ctrl-C or SIGTERM ends it at once with
// ErrInterrupted; without a terminal it returns ErrNoSecret.
func AskLine(prompt string) (string, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil || !term.IsTerminal(int(tty.Fd())) {
		if tty != nil {
			tty.Close()
		}
		return "", ErrNoSecret
	}
	defer tty.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	fmt.Fprint(tty, prompt)
	done := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(io.LimitReader(tty, maxSecret)).ReadString('\n')
		done <- strings.TrimRight(line, "\r\n")
	}()
	select {
	case line := <-done:
		return line, nil
	case <-sigs:
		fmt.Fprintln(tty)
		return "", ErrInterrupted
	}
}

// Source says where a secret comes from, in order of preference.
type Source struct {
	File    string // path of a file holding the secret
	Command string // shell command printing the secret
	Env     string // name of an environment variable holding the secret itself
}

// Configured reports whether any non-interactive source is set.
func (s Source) Configured() bool {
	return s.File != "" || s.Command != "" || (s.Env != "" && os.Getenv(s.Env) != "")
}

// Read returns the secret from the first configured source. ok is false
// when none is configured.
func (s Source) Read() (secret []byte, ok bool, err error) {
	switch {
	case s.File != "":
		b, err := FromFile(s.File)
		return b, true, err
	case s.Command != "":
		b, err := FromCommand(s.Command)
		return b, true, err
	case s.Env != "" && os.Getenv(s.Env) != "":
		return []byte(strings.TrimRight(os.Getenv(s.Env), "\r\n")), true, nil
	}
	return nil, false, nil
}

// ReadLine reads one line from r (for secrets piped on stdin).
func ReadLine(r io.Reader) ([]byte, error) {
	line, err := bufio.NewReader(io.LimitReader(r, maxSecret+1)).ReadBytes('\n')
	if err != nil && err != io.EOF {
		return nil, err
	}
	return firstLine(bytes.NewReader(line), "standard input")
}
