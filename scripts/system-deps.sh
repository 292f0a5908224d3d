#!/usr/bin/env bash
# Debian packages the test suite needs. Installs what is missing when run as root;
# otherwise prints the exact command to run and fails.
set -euo pipefail

# command -> Debian package.
declare -A NEEDED=(
  [chromium]=chromium              # the dashboard test drives headless Chromium
  [chromedriver]=chromium-driver
  [redis-server]=redis-server      # the redis journal and state tests start their own servers
  [redis-cli]=redis-tools
  [mariadbd]=mariadb-server        # the database layer's tests start a primary and replicas
  [mariadb-install-db]=mariadb-server
  [mariadb]=mariadb-client
  [curl]=curl                      # the routing tests check the nginx export by hand, as operators do
  [dig]=bind9-dnsutils             # ... and ask the BIND export's views
  [named-checkconf]=bind9-utils    # the BIND export is checked by the real tools
  [named-checkzone]=bind9-utils
)

# file pattern -> Debian package, for programs that are not on PATH.
declare -A NEEDED_FILES=(
  ["/usr/lib/postgresql/*/bin/initdb"]=postgresql   # the PostgreSQL audit store tests
  ["/usr/sbin/nginx"]=nginx                         # the routing tests run the nginx export
  ["/usr/sbin/named"]=bind9                         # ... and the BIND export
)

missing=()
for cmd in "${!NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done
for pattern in "${!NEEDED_FILES[@]}"; do
  compgen -G "$pattern" >/dev/null || missing+=("${NEEDED_FILES[$pattern]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "the tests need these Debian packages; run: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
