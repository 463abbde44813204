// Command wabackup-vault is the wabackup key vault: an HTTPS (TLS 1.3)
// service that escrows repository secrets under passwords with OPAQUE
// (RFC 9807), limits password guesses and destroys a secret after too many
// failures. It is also one realm of a threshold escrow across several
// vaults (the realm API, /v2/). Its keys and records are sealed by an AES
// key inside a PKCS#11 token (HSM). See docs/VAULT.md.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/wabackup/wabackup/pkg/vault"
	"github.com/wabackup/wabackup/pkg/vault/etcdstore"
	"github.com/wabackup/wabackup/pkg/vault/hsm"
)

// pauseEnv, when "1", makes the vault stop for good after counting an
// attempt durably and before answering it, so the durability test can kill
// it there. Never set it in production.
const pauseEnv = "WABACKUP_VAULT_TEST_PAUSE_AFTER_COUNT"

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	if err := run(os.Args[1:]); err != nil {
		log.Printf("wabackup-vault: %v", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("wabackup-vault", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8443", "address to listen on")
	data := fs.String("data", "", "data directory (holds vault.db with the default bbolt store; the development sealer's key and certificate)")
	storeURL := fs.String("store", "", "record store: empty for bbolt (DATA/vault.db), or etcd://HOST1:2379,HOST2:2379,HOST3:2379/PREFIX for an etcd cluster shared by several vault instances")
	etcdCA := fs.String("etcd-cacert", "", "etcd: CA bundle (PEM) that signed the members' certificates; turns on TLS to etcd")
	etcdCert := fs.String("etcd-cert", "", "etcd: client certificate (PEM); turns on TLS to etcd")
	etcdKey := fs.String("etcd-key", "", "etcd: client certificate's private key (PEM)")
	etcdTimeout := fs.Duration("etcd-timeout", 3*time.Second, "etcd: per-request timeout; without a quorum for this long, a login is refused (503)")
	certFile := fs.String("cert", "", "TLS certificate (PEM)")
	keyFile := fs.String("key", "", "TLS private key (PEM)")
	devTLS := fs.String("dev-tls", "", "development: use (or create) a self-signed certificate in this directory")
	module := fs.String("pkcs11-module", "/usr/lib/softhsm/libsofthsm2.so", "PKCS#11 module of the HSM")
	token := fs.String("pkcs11-token", "", "label of the HSM token (PIN from $WABACKUP_VAULT_PKCS11_PIN)")
	keyLabel := fs.String("pkcs11-key-label", "wabackup-vault-seal", "label of the sealing key on the token (created on first start)")
	createKey := fs.Bool("pkcs11-create-key", true, "generate the sealing key on the token if it has none; give false at every site but the first of a multi-site deployment, whose tokens get the key imported")
	devSealer := fs.Bool("dev-file-sealer", false, "development only: seal with a key file in the data directory instead of an HSM")
	maxGuesses := fs.Int("max-guesses", 10, "policy cap on a record's guess limit")
	defGuesses := fs.Int("default-guesses", 10, "guess limit of records that ask for none")
	loginTimeout := fs.Duration("login-timeout", time.Minute, "how long a login may wait between KE2 and KE3")
	rate := fs.Float64("rate", 5, "requests per second per client address (0: no limit)")
	burst := fs.Int("burst", 20, "burst of requests per client address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *data == "" && (*storeURL == "" || *devSealer || *devTLS != "") {
		return errors.New("give --data DIR")
	}
	if *data != "" {
		if err := os.MkdirAll(*data, 0o700); err != nil {
			return err
		}
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13}
	switch {
	case *certFile != "" && *keyFile != "":
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			return err
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	case *devTLS != "":
		cert, err := devCertificate(*devTLS, *listen)
		if err != nil {
			return err
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
		log.Printf("WARNING: development TLS certificate from %s; clients must trust %s", *devTLS, filepath.Join(*devTLS, "cert.pem"))
	default:
		return errors.New("give --cert and --key (or --dev-tls DIR for development): the vault speaks HTTPS only")
	}

	var sealer vault.Sealer
	if *devSealer {
		s, err := vault.OpenFileSealer(filepath.Join(*data, "DEV-ONLY-sealing.key"), true)
		if err != nil {
			return err
		}
		sealer = s
		for range 3 {
			log.Printf("WARNING: DEVELOPMENT FILE SEALER: the sealing key lies next to the database (%s); whoever copies the directory gets every record's OPRF key material. Never use this in production: use --pkcs11-token.", *data)
		}
	} else {
		if *token == "" {
			return errors.New("give --pkcs11-token LABEL (or --dev-file-sealer for development)")
		}
		s, err := hsm.Open(hsm.Config{Module: *module, TokenLabel: *token, PIN: os.Getenv("WABACKUP_VAULT_PKCS11_PIN"), KeyLabel: *keyLabel, CreateKey: *createKey})
		if err != nil {
			return err
		}
		sealer = s
	}
	defer sealer.Close()

	store, err := openStore(*storeURL, *data, *etcdCA, *etcdCert, *etcdKey, *etcdTimeout, sealer)
	if err != nil {
		return err
	}
	defer store.Close()
	cfg := vault.Config{
		Store: store, Sealer: sealer, MaxGuesses: *maxGuesses, DefaultGuesses: *defGuesses,
		LoginTimeout: *loginTimeout, RatePerSecond: *rate, RateBurst: *burst,
	}
	if os.Getenv(pauseEnv) == "1" {
		log.Printf("WARNING: %s=1: test mode, the vault stops after counting an attempt", pauseEnv)
		cfg.AfterCount = func() {
			log.Printf("test: attempt counted durably; pausing before KE2")
			select {}
		}
	}
	srv, err := vault.New(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           srv.Handler(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(os.Stderr, "http: ", log.LstdFlags|log.LUTC),
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- hs.ServeTLS(ln, "", "") }()
	realmID := srv.RealmID()
	log.Printf("wabackup-vault listening on https://%s (key fingerprint %s, realm id %x, guess limit %d)", ln.Addr(), srv.Fingerprint(), realmID[:], srv.GuessLimit())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return hs.Shutdown(sctx)
}

// openStore opens the RatchetStore (its key table anchored in the
// sealer's epoch keys) in the bbolt file in dataDir, or under the prefix
// of the etcd cluster the store URL names.
func openStore(storeURL, dataDir, caFile, certFile, keyFile string, timeout time.Duration, sealer vault.Sealer) (vault.Store, error) {
	r, ok := sealer.(vault.Ratchet)
	if !ok {
		return nil, errors.New("the sealer cannot make epoch keys")
	}
	if storeURL == "" || storeURL == "bbolt" {
		if caFile != "" || certFile != "" || keyFile != "" {
			return nil, errors.New("--etcd-cacert, --etcd-cert and --etcd-key need --store etcd://HOSTS/PREFIX")
		}
		st, err := vault.OpenRatchet(filepath.Join(dataDir, "vault.db"), r)
		if err != nil {
			return nil, err
		}
		st.Logf = log.Printf
		return st, nil
	}
	endpoints, prefix, secure, err := etcdstore.ParseURL(storeURL)
	if err != nil {
		return nil, err
	}
	cfg := etcdstore.Config{Endpoints: endpoints, Prefix: prefix, RequestTimeout: timeout}
	if secure || caFile != "" || certFile != "" || keyFile != "" {
		if cfg.TLS, err = etcdstore.TLSConfig(caFile, certFile, keyFile); err != nil {
			return nil, err
		}
	}
	log.Printf("record store: etcd %v, prefix %q (TLS %v), key table anchored in the sealer's epoch keys", endpoints, prefix, cfg.TLS != nil)
	st, err := etcdstore.OpenRatchet(cfg, r)
	if err != nil {
		return nil, err
	}
	st.Logf = log.Printf
	return st, nil
}

// devCertificate loads dir/cert.pem and dir/key.pem, creating a
// self-signed ECDSA pair for localhost and the listen host if missing.
func devCertificate(dir, listen string) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		return c, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, err
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "wabackup-vault development"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	if host, _, err := net.SplitHostPort(listen); err == nil && host != "" {
		if ip := net.ParseIP(host); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, host)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	fmt.Fprintf(os.Stderr, "created a self-signed development certificate in %s\n", dir)
	return tls.LoadX509KeyPair(certPath, keyPath)
}
