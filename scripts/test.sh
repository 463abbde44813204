#!/usr/bin/env bash
# Every test. Installs (idempotently) what the tests need on a fresh
# Debian machine with Go: the real servers (versitygw S3 gateway, etcd,
# SoftHSM2, toxiproxy) and the linters, then runs gofmt, go vet, staticcheck and
# go test over the whole module. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
GOBIN=$(go env GOPATH)/bin
export PATH="$GOBIN:$PATH"

need_apt=()
# gcc and libc6-dev: the vault binary (cmd/wabackup-vault) uses cgo for PKCS#11;
# tmux: the progress test draws backup and restore in a real terminal.
for pkg in softhsm2 etcd-server etcd-client gcc libc6-dev tmux; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v versitygw >/dev/null; then
  echo "==> go install versitygw@v1.8.0"
  go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi
if ! command -v toxiproxy-server >/dev/null; then
  # The chaos test shapes and breaks the link to S3 with toxiproxy; its
  # module builds a binary named "server", kept under a clearer name.
  echo "==> go install toxiproxy@v2.12.0"
  go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0
  mv "$GOBIN/server" "$GOBIN/toxiproxy-server"
fi
if ! command -v staticcheck >/dev/null; then
  echo "==> go install staticcheck"
  go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi

echo "==> gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "not gofmt-formatted:"; echo "$unformatted"; exit 1; fi
echo "==> go vet"
go vet ./...
echo "==> staticcheck"
staticcheck ./...
echo "==> go test"
# Servers the tests start must exist: a missing one fails instead of skipping.
export WABACKUP_REQUIRE_SERVERS=1
go test -count=1 -timeout 40m ./... ./testdata/gen "$@"
