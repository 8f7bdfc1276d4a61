package kube

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is the cluster's credentials, made fresh for every cluster: a CA, the
// API server's serving certificate (valid for the node's address, the
// Service address and the in-cluster names), the ServiceAccount token
// signing key, and static bearer tokens for the admin (system:masters) and
// the kubelet (system:node:NodeName).
type pki struct {
	caPEM, caKeyPEM         []byte
	serverPEM, serverKeyPEM []byte
	saKeyPEM, saPubPEM      []byte
	adminToken, nodeToken   string
	vmNodeToken             string // VMNodeName's (package vmnode)
}

func newPKI() (*pki, error) {
	p := &pki{}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "oomguard-kube-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, IsCA: true, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return nil, err
	}
	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	server := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		// VMHostIP: where a node in a VM on QEMU's user-mode network
		// reaches the namespace's loopback, and so the API server.
		IPAddresses: []net.IP{net.ParseIP(NodeIP), net.ParseIP(ServiceIP), net.ParseIP("127.0.0.1"), net.ParseIP(VMHostIP)},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}
	serverDER, err := x509.CreateCertificate(rand.Reader, server, ca, &serverKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("API server certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	p.caPEM = pemBlock("CERTIFICATE", caDER)
	p.serverPEM = pemBlock("CERTIFICATE", serverDER)
	if p.caKeyPEM, err = ecKeyPEM(caKey); err != nil {
		return nil, err
	}
	if p.serverKeyPEM, err = ecKeyPEM(serverKey); err != nil {
		return nil, err
	}
	if p.saKeyPEM, err = ecKeyPEM(saKey); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	p.saPubPEM = pemBlock("PUBLIC KEY", pub)
	if p.adminToken, err = randomToken(); err != nil {
		return nil, err
	}
	if p.nodeToken, err = randomToken(); err != nil {
		return nil, err
	}
	if p.vmNodeToken, err = randomToken(); err != nil {
		return nil, err
	}
	return p, nil
}

// write puts the files the daemons read into dir/pki.
func (p *pki) write(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tokens := fmt.Sprintf("%s,admin,admin,system:masters\n%s,system:node:%s,kubelet,system:nodes\n%s,system:node:%s,vm-kubelet,system:nodes\n",
		p.adminToken, p.nodeToken, NodeName, p.vmNodeToken, VMNodeName)
	for name, b := range map[string][]byte{
		"ca.crt": p.caPEM, "ca.key": p.caKeyPEM, "apiserver.crt": p.serverPEM, "apiserver.key": p.serverKeyPEM,
		"sa.key": p.saKeyPEM, "sa.pub": p.saPubPEM, "tokens.csv": []byte(tokens),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func ecKeyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pemBlock("EC PRIVATE KEY", der), nil
}

func randomToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
