package opaque_test

import (
	"bytes"
	"fmt"

	"github.com/wabackup/wabackup/pkg/opaque"
)

// A registration and a login, with the messages passed as bytes. A real
// client would use opaque.DefaultArgon2idKSF.
func Example() {
	suite := opaque.Ristretto255SHA512
	context := []byte("wabackup-vault-v1")
	ksf := opaque.Argon2idKSF{Time: 1, MemoryKiB: 1024, Threads: 1}

	keys, _ := suite.GenerateServerKeys() // kept by the server, secret
	server, _ := suite.NewServer(keys, nil, context)
	client, _ := suite.NewClient(ksf, opaque.Identities{}, context)
	credID := []byte("user-42")
	password := []byte("correct horse battery staple")

	// Registration.
	req, regState, _ := client.RegistrationRequest(password)
	reqBytes, _ := req.MarshalBinary()
	req, _ = suite.UnmarshalRegistrationRequest(reqBytes) // server side
	resp, _ := server.RegistrationResponse(req, credID)
	record, exportKey, _ := client.FinalizeRegistration(regState, resp)
	stored, _ := record.MarshalBinary() // the server stores this under credID

	// Login.
	ke1, loginState, _ := client.KE1(password)
	rec, _ := suite.UnmarshalRegistrationRecord(stored)
	ke2, serverState, _ := server.KE2(ke1, credID, nil, rec)
	ke3, clientSession, loginExportKey, err := client.KE3(loginState, ke2)
	if err != nil {
		fmt.Println("login failed:", err)
		return
	}
	serverSession, err := server.Finish(serverState, ke3)
	if err != nil {
		fmt.Println("server rejected KE3:", err)
		return
	}
	fmt.Println("session keys match:", bytes.Equal(clientSession, serverSession))
	fmt.Println("export key stable:", bytes.Equal(exportKey, loginExportKey))

	// A wrong password fails at the client, on KE2.
	ke1, loginState, _ = client.KE1([]byte("wrong"))
	ke2, _, _ = server.KE2(ke1, credID, nil, rec)
	_, _, _, err = client.KE3(loginState, ke2)
	fmt.Println(err != nil)
	// Output:
	// session keys match: true
	// export key stable: true
	// true
}
