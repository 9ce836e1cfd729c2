#!/usr/bin/env bash
# Checks the deployment artifacts against a built roomcast binary:
#   1. `roomcast check-config conf/roomcast.toml` must print "ok";
#   2. the config's paths must lie in the unit's StateDirectory/RuntimeDirectory;
#   3. `systemd-analyze verify systemd/roomcast.service`, when systemd-analyze exists, must
#      report nothing about our unit. The unit names /usr/local/bin/roomcast, which verify
#      requires to exist, so a temporary copy of the unit points at the binary under test.
#
# Usage: systemd/verify.sh [PATH-TO-ROOMCAST]        (default: target/debug/roomcast)
# Set REQUIRE_SYSTEMD_ANALYZE=1 to fail instead of skipping step 3 when systemd-analyze is
# missing. UNIT= and CONF= override the files checked.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-target/debug/roomcast}
unit=${UNIT:-systemd/roomcast.service}
conf=${CONF:-conf/roomcast.toml}
installed=/usr/local/bin/roomcast

fail() {
    echo "verify: FAIL: $*" >&2
    exit 1
}

[[ -x $bin ]] || fail "$bin is not an executable roomcast binary (run cargo build, or pass its path)"
bin=$(realpath "$bin")

# 1. The configuration is valid for this binary.
out=$("$bin" check-config "$conf" 2>&1) || fail "check-config: $out"
[[ $out == "$conf: ok" ]] || fail "check-config printed: $out"
echo "verify: $out"

# 2. The files the daemon writes are where the sandbox lets it write (ProtectSystem=strict).
grep -Eq '^StateDirectory=roomcast$' "$unit" || fail "$unit: no StateDirectory=roomcast"
grep -Eq '^RuntimeDirectory=roomcast$' "$unit" || fail "$unit: no RuntimeDirectory=roomcast"
grep -Eq '^path = "/var/lib/roomcast/[^/"]+"' "$conf" || fail "$conf: history.path is not in /var/lib/roomcast"
grep -Eq '^socket = "/run/roomcast/[^/"]+"' "$conf" || fail "$conf: admin.socket is not in /run/roomcast"
grep -Fq "ExecStart=$installed serve --config /etc/roomcast/roomcast.toml" "$unit" ||
    fail "$unit: ExecStart is not '$installed serve --config /etc/roomcast/roomcast.toml'"
echo "verify: $conf paths match $unit"

# 3. systemd's own parser. It exits 0 on many problems (unknown keys, bad values are only
#    "ignoring" warnings), so any line about our unit counts as a failure; lines about other
#    units of the host are shown but ignored.
if ! command -v systemd-analyze >/dev/null; then
    [[ ${REQUIRE_SYSTEMD_ANALYZE:-0} == 1 ]] && fail "systemd-analyze not found"
    echo "verify: systemd-analyze not found; unit not verified (apt-get install systemd)"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#$installed#$bin#g" "$unit" >"$tmp/roomcast.service"
status=0
report=$(systemd-analyze verify --man=no "$tmp/roomcast.service" 2>&1) || status=$?
ours=$(grep -E "roomcast\.service|$tmp" <<<"$report" || true)
others=$(grep -vE "roomcast\.service|$tmp" <<<"$report" || true)
[[ -z $others ]] || printf 'verify: ignored (not about roomcast.service):\n%s\n' "$others"
if [[ $status -ne 0 || -n $ours ]]; then
    printf '%s\n' "${ours:-$report}" | sed "s#$tmp/##g; s#$bin#$installed#g" >&2
    fail "systemd-analyze verify $unit (exit $status)"
fi
echo "verify: systemd-analyze verify $unit: clean ($(systemd-analyze --version | head -n1))"
