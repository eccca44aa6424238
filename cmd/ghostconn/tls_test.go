package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// writeWebConfig writes a self-signed certificate for 127.0.0.1 and an
// exporter-toolkit web config with TLS and one basic-auth user.
func writeWebConfig(t *testing.T, user, password string) (configPath string, pool *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ghostconn test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	configPath = filepath.Join(dir, "web.yml")
	cfg := "tls_server_config:\n  cert_file: " + certPath + "\n  key_file: " + keyPath + "\nbasic_auth_users:\n  " + user + ": " + string(hash) + "\n"
	if err := os.WriteFile(configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return configPath, pool
}

func TestMetricsTLSAndBasicAuth(t *testing.T) {
	config, pool := writeWebConfig(t, "prometheus", "s3cret")
	addr := freePort(t)
	a := launchAgent(t, "", "", "--metrics-address", addr, "--web.config.file", config)
	defer a.stop(t)

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	get := func(user, password string) (int, string) {
		req, _ := http.NewRequest("GET", "https://"+addr+"/metrics", nil)
		if user != "" {
			req.SetBasicAuth(user, password)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("prometheus", "s3cret"); code != 200 || !strings.Contains(body, "ghostconn_ready 1") {
		t.Errorf("right password: %d", code)
	}
	if code, _ := get("prometheus", "wrong"); code != 401 {
		t.Errorf("wrong password: %d, want 401", code)
	}
	if code, _ := get("", ""); code != 401 {
		t.Errorf("no credentials: %d, want 401", code)
	}
	// Plain HTTP to the TLS listener gets no metrics.
	resp, err := http.Get("http://" + addr + "/metrics")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 || strings.Contains(string(b), "ghostconn_") {
			t.Errorf("plain HTTP to the TLS listener answered %d with metrics", resp.StatusCode)
		}
	}
}

func TestBadWebConfigExitsTwo(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "web.yml")
	os.WriteFile(bad, []byte("tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\nbogus_key: 1\n"), 0o600)
	for _, path := range []string{bad, filepath.Join(t.TempDir(), "missing.yml")} {
		_, stderr, code := ghostconn(t, "agent", "--web.config.file", path)
		if code != 2 || !strings.Contains(stderr, "--web.config.file") {
			t.Errorf("web config %s: exit %d, stderr %q", path, code, stderr)
		}
	}
}
